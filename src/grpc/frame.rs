//! gRPC's length-prefixed message framing.
//!
//! Each message on an HTTP/2 stream is `[compressed: u8][length: u32 BE][message]`.
//! HTTP/2 DATA frames cut that byte stream wherever they like, so the decoder takes
//! chunks and yields the message once all of it has arrived. A unary call carries
//! exactly one message each way, which is what [`MessageDecoder`] checks.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Length of the prefix before every message.
pub const HEADER_LEN: usize = 5;

/// Why a message could not be framed or unframed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The prefix announces more bytes than the configured maximum.
    TooLarge { len: usize, max: usize },
    /// The stream ended before the announced bytes (or the prefix) arrived.
    Truncated { expected: usize, received: usize },
    /// The compressed flag is set, but no compression was negotiated.
    Compressed,
    /// The stream ended without any message.
    Empty,
    /// More bytes followed the one message of a unary call. `extra` counts those
    /// received when the decoder noticed (it reads no further), so it depends on
    /// how the stream was cut into DATA frames; the error itself does not.
    TrailingData { extra: usize },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the maximum of {max} bytes"
                )
            }
            FrameError::Truncated { expected, received } => write!(
                f,
                "truncated gRPC frame: expected {expected} bytes, stream ended after {received}"
            ),
            FrameError::Compressed => {
                f.write_str("compressed gRPC message, but no compression was negotiated")
            }
            FrameError::Empty => f.write_str("stream ended without a gRPC message"),
            FrameError::TrailingData { extra } => {
                write!(f, "{extra} unexpected bytes after the unary message")
            }
        }
    }
}

/// Encodes `message` with its 5-byte prefix into one buffer, ready for one DATA frame.
pub fn encode<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Cannot fail: the buffer was sized from encoded_len().
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// Collects the single message of a unary call from HTTP/2 DATA chunks.
///
/// The common case — the whole frame in one DATA chunk — is zero-copy: the message
/// is a slice of that chunk. Only a message split across chunks is copied together.
#[derive(Debug)]
pub struct MessageDecoder {
    /// Largest message accepted, checked as soon as the prefix is known so an
    /// oversized reply is refused before it is buffered.
    max_len: usize,
    /// The first chunk, kept whole while it may hold the entire frame.
    first: Option<Bytes>,
    /// Bytes gathered once a frame spans several chunks.
    joined: BytesMut,
    /// Announced message length once the prefix has been read.
    announced: Option<usize>,
}

impl MessageDecoder {
    pub fn new(max_len: usize) -> MessageDecoder {
        MessageDecoder {
            max_len,
            first: None,
            joined: BytesMut::new(),
            announced: None,
        }
    }

    /// Adds a chunk; fails early on an oversized or compressed message, or on data
    /// past the one message.
    pub fn push(&mut self, chunk: Bytes) -> Result<(), FrameError> {
        if chunk.is_empty() {
            return Ok(());
        }
        match (self.first.take(), self.joined.is_empty()) {
            (None, true) => self.first = Some(chunk),
            (Some(first), _) => {
                self.joined.reserve(first.len() + chunk.len());
                self.joined.extend_from_slice(&first);
                self.joined.extend_from_slice(&chunk);
            }
            (None, false) => self.joined.extend_from_slice(&chunk),
        }
        self.check_prefix()
    }

    fn buffered(&self) -> &[u8] {
        match &self.first {
            Some(first) => first,
            None => &self.joined,
        }
    }

    fn check_prefix(&mut self) -> Result<(), FrameError> {
        let buffered = self.buffered();
        if self.announced.is_none() && buffered.len() >= HEADER_LEN {
            if buffered[0] != 0 {
                return Err(FrameError::Compressed);
            }
            let len =
                u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]) as usize;
            if len > self.max_len {
                return Err(FrameError::TooLarge {
                    len,
                    max: self.max_len,
                });
            }
            self.announced = Some(len);
        }
        if let Some(len) = self.announced {
            let total = HEADER_LEN + len;
            let buffered = self.buffered().len();
            if buffered > total {
                return Err(FrameError::TrailingData {
                    extra: buffered - total,
                });
            }
        }
        Ok(())
    }

    /// The message bytes (without prefix), once the stream has ended.
    pub fn finish(self) -> Result<Bytes, FrameError> {
        let received = self.buffered().len();
        let Some(len) = self.announced else {
            return Err(if received == 0 {
                FrameError::Empty
            } else {
                FrameError::Truncated {
                    expected: HEADER_LEN,
                    received,
                }
            });
        };
        if received < HEADER_LEN + len {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN + len,
                received,
            });
        }
        let mut bytes = match self.first {
            Some(first) => first,
            None => self.joined.freeze(),
        };
        bytes.advance(HEADER_LEN);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::source::FetchRequest;

    fn sample() -> FetchRequest {
        FetchRequest {
            device_id: "dev-0000042".into(),
            class: "camera".into(),
            tick_unix_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn encode_writes_prefix_then_message() {
        let frame = encode(&sample());
        let body = sample().encode_to_vec();
        assert_eq!(frame[0], 0);
        assert_eq!(&frame[1..5], &(body.len() as u32).to_be_bytes());
        assert_eq!(&frame[5..], &body[..]);
    }

    #[test]
    fn whole_frame_in_one_chunk_decodes_without_copy() {
        let frame = encode(&sample());
        let mut decoder = MessageDecoder::new(1024);
        decoder.push(frame.clone()).unwrap();
        let message = decoder.finish().unwrap();
        assert_eq!(message.as_ptr(), frame[5..].as_ptr());
        assert_eq!(FetchRequest::decode(message).unwrap(), sample());
    }

    #[test]
    fn frame_split_at_every_byte_still_decodes() {
        let frame = encode(&sample());
        for cut in 1..frame.len() {
            let mut decoder = MessageDecoder::new(1024);
            decoder.push(frame.slice(..cut)).unwrap();
            decoder.push(frame.slice(cut..)).unwrap();
            let message = decoder.finish().unwrap();
            assert_eq!(
                FetchRequest::decode(message).unwrap(),
                sample(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_message_is_refused_at_the_prefix() {
        let mut decoder = MessageDecoder::new(16);
        let error = decoder
            .push(Bytes::from_static(&[0, 0, 0, 1, 0]))
            .unwrap_err();
        assert_eq!(error, FrameError::TooLarge { len: 256, max: 16 });
        assert_eq!(
            error.to_string(),
            "message of 256 bytes exceeds the maximum of 16 bytes"
        );
    }

    #[test]
    fn truncated_frames_are_reported() {
        let frame = encode(&sample());
        let mut decoder = MessageDecoder::new(1024);
        decoder.push(frame.slice(..frame.len() - 3)).unwrap();
        let error = decoder.finish().unwrap_err();
        assert_eq!(
            error,
            FrameError::Truncated {
                expected: frame.len(),
                received: frame.len() - 3
            }
        );
        let mut decoder = MessageDecoder::new(1024);
        decoder.push(frame.slice(..3)).unwrap();
        assert_eq!(
            decoder.finish().unwrap_err().to_string(),
            "truncated gRPC frame: expected 5 bytes, stream ended after 3"
        );
    }

    #[test]
    fn empty_compressed_and_trailing_are_errors() {
        assert_eq!(
            MessageDecoder::new(8).finish().unwrap_err(),
            FrameError::Empty
        );
        let mut decoder = MessageDecoder::new(8);
        assert_eq!(
            decoder.push(Bytes::from_static(&[1, 0, 0, 0, 0])),
            Err(FrameError::Compressed)
        );
        let mut decoder = MessageDecoder::new(8);
        assert_eq!(
            decoder.push(Bytes::from_static(&[0, 0, 0, 0, 1, 7, 9])),
            Err(FrameError::TrailingData { extra: 1 })
        );
    }

    #[test]
    fn empty_message_is_valid() {
        let mut decoder = MessageDecoder::new(8);
        decoder.push(Bytes::from_static(&[0, 0, 0, 0, 0])).unwrap();
        assert!(decoder.finish().unwrap().is_empty());
    }
}
