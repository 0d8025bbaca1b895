//! What the mock data source answers: tensors of any KServe v2 datatype and
//! shape whose content is a documented, deterministic function of the device,
//! the tick and the element index, so a test — in Rust or in Python — can
//! recompute every byte it should have received.
//!
//! # The content function ([`tensor_content`])
//!
//! For a tensor named `name` (empty for the single tensor of FetchResponse's
//! fields 1-3) of device `device_id` at tick `tick_unix_ms`:
//!
//! 1. `key` = the UTF-8 bytes of `"<device_id>@<tick_unix_ms>"` (the tick in
//!    decimal, `-` for negatives), followed by `"/<name>"` when `name` is not
//!    empty: `"dev-1@1700000000000"`, `"dev-1@1700000000000/image"`.
//! 2. `seed` = FNV-1a 64 of `key`: start at `0xcbf29ce484222325`; per byte,
//!    `h ^= byte; h *= 0x100000001b3` (mod 2^64). No finaliser.
//! 3. Element `i` (0-based, row-major) draws `x_i`, the `i`-th output of
//!    SplitMix64 seeded with `seed`: `z = seed + (i + 1) * 0x9e3779b97f4a7c15`,
//!    `z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9`,
//!    `z = (z ^ (z >> 27)) * 0x94d049bb133111eb`, `x_i = z ^ (z >> 31)`, all
//!    mod 2^64.
//! 4. The element is, little-endian:
//!
//! | Datatype | Element |
//! |---|---|
//! | `BOOL` | one byte, `x & 1` |
//! | `UINT8`, `INT8` | the low byte of `x` |
//! | `UINT16`, `INT16` | the low 2 bytes of `x` |
//! | `UINT32`, `INT32` | the low 4 bytes of `x` |
//! | `UINT64`, `INT64` | the 8 bytes of `x` |
//! | `FP16` | `(x >> 53) / 2^11`, in [0, 1), exact in IEEE half precision |
//! | `BF16` | `(x >> 56) / 2^8`, in [0, 1), exact in bfloat16 |
//! | `FP32` | `(x >> 40) / 2^24`, in [0, 1), exact in f32 |
//! | `FP64` | `(x >> 11) / 2^53`, in [0, 1), exact in f64 |
//! | `BYTES` | the 16 lowercase hex digits of `x` (`format(x, "016x")`), after a 4-byte little-endian length (16) |
//!
//! In Python (`M = 2**64 - 1`):
//!
//! ```python
//! def seed(device_id, tick_ms, name=""):
//!     h = 0xcbf29ce484222325
//!     for b in (f"{device_id}@{tick_ms}" + (f"/{name}" if name else "")).encode():
//!         h = ((h ^ b) * 0x100000001b3) & M
//!     return h
//!
//! def x(seed, i):
//!     z = (seed + (i + 1) * 0x9e3779b97f4a7c15) & M
//!     z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
//!     z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
//!     return z ^ (z >> 31)
//!
//! fp32 = numpy.array([(x(s, i) >> 40) / 2**24 for i in range(n)], dtype="<f4")
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::tensor;

/// The largest tensor a mock source makes, in bytes: far above any message
/// limit a client sets, and small enough that a typo in a shape cannot make
/// the mock allocate gigabytes per call.
pub const MAX_TENSOR_BYTES: usize = 64 << 20;

/// Bytes of one BYTES element of the content: a 4-byte length and 16 hex digits.
const BYTES_ELEMENT_LEN: usize = 4 + 16;

/// The datatypes the mocks make content of: every KServe v2 datatype.
pub const DATATYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "BF16", "FP32", "FP64", "BYTES",
];

/// One tensor a mock source answers: a name (empty for the single tensor of
/// FetchResponse's fields 1-3), a datatype and a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The model input's name, a NamedTensor's `name`; also part of the
    /// content's seed, so two inputs of one fetch differ.
    pub name: String,
    /// KServe v2 datatype, one of [`DATATYPES`].
    pub datatype: String,
    /// Non-negative dimensions; at most [`MAX_TENSOR_BYTES`] of content.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// A checked spec: a known datatype and a shape whose content fits in
    /// [`MAX_TENSOR_BYTES`].
    pub fn new(name: &str, datatype: &str, shape: Vec<i64>) -> Result<TensorSpec, String> {
        let datatype = parse_datatype(datatype)?;
        content_len(&datatype, &shape)?;
        Ok(TensorSpec {
            name: name.to_string(),
            datatype,
            shape,
        })
    }

    /// This tensor's content for a device and tick: [`tensor_content`].
    pub fn content(&self, device_id: &str, tick_unix_ms: i64) -> Result<Bytes, String> {
        tensor_content(
            &self.datatype,
            &self.shape,
            device_id,
            tick_unix_ms,
            &self.name,
        )
    }
}

/// What a mock source answers per fetch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourceTensors {
    /// UINT8 [1, payload_bytes] of [`super::mock_payload`], in fields 1-3: the
    /// original answer, which many tests recompute.
    #[default]
    Payload,
    /// One tensor in fields 1-3, its content [`tensor_content`] of the fetch's
    /// device and tick (the spec's name, normally empty, is part of the seed).
    Tensor(TensorSpec),
    /// Several named tensors in `inputs`, each [`tensor_content`] with its name.
    Inputs(Vec<TensorSpec>),
}

/// Reads a KServe v2 datatype name, case-insensitively, as its canonical
/// upper-case spelling.
pub fn parse_datatype(text: &str) -> Result<String, String> {
    let upper = text.trim().to_ascii_uppercase();
    if DATATYPES.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!(
            "{text:?} is not a KServe v2 datatype: use one of {}",
            DATATYPES.join(", ")
        ))
    }
}

/// Reads a shape written as comma-separated non-negative dimensions, `1,256`;
/// an empty text is a scalar (`[]`).
pub fn parse_shape(text: &str) -> Result<Vec<i64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|dim| match dim.trim().parse::<i64>() {
            Ok(dim) if dim >= 0 => Ok(dim),
            _ => Err(format!(
                "shape {text:?}: {dim:?} is not a dimension; write non-negative integers \
                 separated by commas, e.g. 1,256"
            )),
        })
        .collect()
}

/// Reads one named tensor written `name:DATATYPE:shape`, e.g. `image:FP32:1,3,8,8`.
pub fn parse_input(text: &str) -> Result<TensorSpec, String> {
    let mut parts = text.splitn(3, ':');
    let (Some(name), Some(datatype), Some(shape)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "input {text:?}: write name:DATATYPE:shape, e.g. image:FP32:1,3,8,8"
        ));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("input {text:?}: the name is empty"));
    }
    TensorSpec::new(name, datatype, parse_shape(shape)?)
        .map_err(|error| format!("input {text:?}: {error}"))
}

/// Bytes of the content of `datatype` x `shape`, refused past [`MAX_TENSOR_BYTES`].
fn content_len(datatype: &str, shape: &[i64]) -> Result<usize, String> {
    let element = tensor::element_size(datatype).unwrap_or(BYTES_ELEMENT_LEN);
    let too_large =
        || format!("a tensor of {datatype} {shape:?} is larger than {MAX_TENSOR_BYTES} bytes");
    if shape.iter().any(|&dim| dim < 0) {
        return Err(format!("shape {shape:?} has a negative dimension"));
    }
    // A zero dimension empties the tensor whatever the others are.
    if shape.contains(&0) {
        return Ok(0);
    }
    let mut len = element;
    for &dim in shape {
        len = len.checked_mul(dim as usize).ok_or_else(too_large)?;
    }
    if len > MAX_TENSOR_BYTES {
        return Err(too_large());
    }
    Ok(len)
}

/// FNV-1a 64 of the content's key, `"<device_id>@<tick>"` then `"/<name>"`
/// when `name` is not empty (step 2 of the [module](self) doc).
pub fn content_seed(device_id: &str, tick_unix_ms: i64, name: &str) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let tick = tick_unix_ms.to_string();
    let mut parts = vec![device_id.as_bytes(), b"@", tick.as_bytes()];
    if !name.is_empty() {
        parts.extend([&b"/"[..], name.as_bytes()]);
    }
    parts
        .into_iter()
        .flatten()
        .fold(FNV_OFFSET_BASIS, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
        })
}

/// The `index`-th (0-based) output of SplitMix64 seeded with `seed` (step 3).
pub fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// IEEE half-precision bits of `k / 2^11`, `k < 2^11`: exact, as every such
/// value has at most 11 significant bits and is at least 2^-11 (normal).
fn fp16_bits(k: u64) -> u16 {
    if k == 0 {
        return 0;
    }
    let e = 63 - k.leading_zeros() as u64; // floor(log2 k), 0..=10
    let mantissa = (k << (10 - e)) & 0x3ff;
    ((e + 4) << 10 | mantissa) as u16
}

/// The content of a tensor of `datatype` x `shape` for a device and tick, as
/// the [module](self) doc defines it: raw little-endian row-major bytes
/// (BYTES: length-prefixed elements). Errors name an unknown datatype, a
/// negative dimension or a tensor past [`MAX_TENSOR_BYTES`].
pub fn tensor_content(
    datatype: &str,
    shape: &[i64],
    device_id: &str,
    tick_unix_ms: i64,
    name: &str,
) -> Result<Bytes, String> {
    let datatype = parse_datatype(datatype)?;
    let len = content_len(&datatype, shape)?;
    let element_size = tensor::element_size(&datatype).unwrap_or(BYTES_ELEMENT_LEN);
    let count = (len / element_size) as u64;
    let seed = content_seed(device_id, tick_unix_ms, name);
    let mut out = BytesMut::with_capacity(len);
    for x in (0..count).map(|i| splitmix64(seed, i)) {
        match datatype.as_str() {
            "BOOL" => out.put_u8((x & 1) as u8),
            "FP16" => out.put_u16_le(fp16_bits(x >> 53)),
            // k / 2^8 is exact in f32, whose upper half is its bfloat16.
            "BF16" => out.put_u16_le(((((x >> 56) as f32) / 256.0).to_bits() >> 16) as u16),
            "FP32" => out.put_f32_le((x >> 40) as f32 / (1u64 << 24) as f32),
            "FP64" => out.put_f64_le((x >> 11) as f64 / (1u64 << 53) as f64),
            "BYTES" => {
                out.put_u32_le(16);
                out.put_slice(format!("{x:016x}").as_bytes());
            }
            // The integers: the low bytes of x.
            _ => out.put_slice(&x.to_le_bytes()[..element_size]),
        }
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        assert_eq!(parse_shape("1, 256"), Ok(vec![1, 256]));
        assert_eq!(parse_shape(""), Ok(vec![]));
        assert!(parse_shape("1,-2")
            .unwrap_err()
            .contains("\"-2\" is not a dimension"));
        assert!(parse_shape("1,,2").is_err());
        assert_eq!(parse_datatype("fp32"), Ok("FP32".into()));
        assert!(parse_datatype("FP8")
            .unwrap_err()
            .contains("not a KServe v2 datatype"));
        assert_eq!(
            parse_input("image:fp32:1,3"),
            Ok(TensorSpec {
                name: "image".into(),
                datatype: "FP32".into(),
                shape: vec![1, 3],
            })
        );
        assert!(parse_input("image:FP32")
            .unwrap_err()
            .contains("name:DATATYPE:shape"));
        assert!(parse_input(":FP32:1")
            .unwrap_err()
            .contains("name is empty"));
        assert!(parse_input("a:FP32:1,1000000000")
            .unwrap_err()
            .contains("larger than"));
        assert!(TensorSpec::new("", "UINT8", vec![1 << 62, 1 << 62]).is_err());
    }

    #[test]
    fn content_fills_its_shape_for_every_datatype() {
        for datatype in DATATYPES {
            let raw = tensor_content(datatype, &[2, 3], "dev-1", 1_000, "").unwrap();
            assert_eq!(
                tensor::check_raw(datatype, &[2, 3], &raw),
                Ok(()),
                "{datatype}"
            );
            let empty = tensor_content(datatype, &[0, 1 << 62], "dev-1", 1_000, "").unwrap();
            assert!(empty.is_empty(), "{datatype}");
        }
    }

    #[test]
    fn content_depends_on_device_tick_and_name_only() {
        let content = |device: &str, tick: i64, name: &str| {
            tensor_content("UINT64", &[4], device, tick, name).unwrap()
        };
        assert_eq!(content("a", 1, ""), content("a", 1, ""));
        assert_ne!(content("a", 1, ""), content("b", 1, ""));
        assert_ne!(content("a", 1, ""), content("a", 2, ""));
        assert_ne!(content("a", 1, "x"), content("a", 1, "y"));
    }

    #[test]
    fn floats_are_the_documented_fractions_exactly() {
        // FNV-1a 64 of "" is the offset basis; the first SplitMix64 output of
        // seed 0 is the well-known 0xe220a8397b1dcdaf.
        assert_eq!(splitmix64(0, 0), 0xe220_a839_7b1d_cdaf);
        let x = splitmix64(content_seed("d", 5, ""), 0);
        let fp16 = tensor_content("FP16", &[1], "d", 5, "").unwrap();
        let half = u16::from_le_bytes([fp16[0], fp16[1]]);
        // Decode the half by hand: 1.m × 2^(e-15).
        let value =
            (1.0 + f64::from(half & 0x3ff) / 1024.0) * 2f64.powi(i32::from(half >> 10) - 15);
        let expected = (x >> 53) as f64 / 2048.0;
        assert!(
            expected == 0.0 && half == 0 || value == expected,
            "{value} vs {expected}"
        );
        let bf16 = tensor_content("BF16", &[1], "d", 5, "").unwrap();
        let widened = f32::from_bits(u32::from(u16::from_le_bytes([bf16[0], bf16[1]])) << 16);
        assert_eq!(widened, (x >> 56) as f32 / 256.0);
        for k in 1..2048u64 {
            let half = fp16_bits(k);
            let value =
                (1.0 + f64::from(half & 0x3ff) / 1024.0) * 2f64.powi(i32::from(half >> 10) - 15);
            assert_eq!(value, k as f64 / 2048.0, "k = {k}");
        }
    }
}
