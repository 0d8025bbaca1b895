//! A class's model contract: the tensors its model takes and gives, by name,
//! datatype and shape.
//!
//! A contract comes from the config (`[classes.contract]`), from the model
//! server's `ModelMetadata` (read by the probe at start and on every
//! reconnect), or both — then the server's must agree with the config's, and a
//! replica whose does not is refused with the difference named. Jobs check
//! what they send against the class's contract before ModelInfer, and what the
//! model answers after: a data source sending FP64 to an FP32 model becomes
//! failed rows that say so, not whatever the server makes of the bytes.
//!
//! Checks allocate only when they fail: the per-job cost of a contract that
//! holds is a few string comparisons.

use std::fmt;
use std::sync::Arc;

use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::proto::inference::ModelMetadataResponse;
use crate::record::Output;

/// One tensor of a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorContract {
    /// The tensor's name, as the model knows it.
    pub name: String,
    /// KServe v2 datatype, e.g. `FP32`.
    pub datatype: String,
    /// Shape; `-1` accepts any size in that dimension.
    pub shape: Vec<i64>,
}

/// Where a contract was read, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `[classes.contract]` in the config.
    Config,
    /// The `ModelMetadata` answer of this compute node (as the config writes it).
    Metadata(Arc<str>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Config => f.write_str("the class's contract in the config"),
            Origin::Metadata(node) => write!(f, "ModelMetadata of {node}"),
        }
    }
}

/// What a model takes and gives. An empty list checks nothing on its side:
/// a config may name only the inputs, and a server may describe none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// The model's name, for messages.
    pub model: String,
    /// The inputs it takes; every one must be sent, and nothing else.
    pub inputs: Vec<TensorContract>,
    /// The outputs it gives; an answered output must be one of them and match.
    pub outputs: Vec<TensorContract>,
    /// The versions the server has (metadata only; empty says nothing).
    pub versions: Vec<String>,
    /// Where the contract was read.
    pub origin: Origin,
}

impl TensorContract {
    fn of_metadata(tensor: &TensorMetadata) -> TensorContract {
        TensorContract {
            name: tensor.name.clone(),
            datatype: tensor.datatype.clone(),
            shape: tensor.shape.clone(),
        }
    }
}

/// Whether two shapes can describe the same tensor: the same rank, and each
/// dimension equal or `-1` on either side.
fn shapes_agree(left: &[i64], right: &[i64]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .all(|(&a, &b)| a == b || a == -1 || b == -1)
}

/// A shape as messages write it: `[1, 256]`, `-1` as `-1`.
struct ShapeText<'a>(&'a [i64]);

impl fmt::Display for ShapeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The names of `tensors`, quoted and comma-separated, for messages.
fn names(tensors: &[TensorContract]) -> String {
    let quoted: Vec<String> = tensors
        .iter()
        .map(|tensor| format!("{:?}", tensor.name))
        .collect();
    quoted.join(", ")
}

impl Contract {
    /// The contract a server's `ModelMetadata` answer describes, read from `node`.
    pub fn from_metadata(metadata: &ModelMetadataResponse, node: Arc<str>) -> Contract {
        Contract {
            model: metadata.name.clone(),
            inputs: metadata
                .inputs
                .iter()
                .map(TensorContract::of_metadata)
                .collect(),
            outputs: metadata
                .outputs
                .iter()
                .map(TensorContract::of_metadata)
                .collect(),
            versions: metadata.versions.clone(),
            origin: Origin::Metadata(node),
        }
    }

    /// Whether this contract holds for the `served` one (what a server's
    /// metadata says): every tensor named here exists there with the same
    /// datatype and an agreeing shape, and, when this contract names inputs,
    /// the served model takes no input it leaves out. The error names the
    /// first difference.
    pub fn agrees_with(&self, served: &Contract) -> Result<(), String> {
        let sides = [
            ("input", &self.inputs, &served.inputs),
            ("output", &self.outputs, &served.outputs),
        ];
        for (what, ours, theirs) in sides {
            if theirs.is_empty() {
                continue;
            }
            for tensor in ours {
                let Some(other) = theirs.iter().find(|other| other.name == tensor.name) else {
                    return Err(format!(
                        "{} names {what} {:?}, {} has no such {what} (its {what}s: {})",
                        self.origin,
                        tensor.name,
                        served.origin,
                        names(theirs)
                    ));
                };
                if other.datatype != tensor.datatype || !shapes_agree(&other.shape, &tensor.shape) {
                    return Err(format!(
                        "{what} {:?} is {} {} in {}, {} {} in {}",
                        tensor.name,
                        tensor.datatype,
                        ShapeText(&tensor.shape),
                        self.origin,
                        other.datatype,
                        ShapeText(&other.shape),
                        served.origin
                    ));
                }
            }
        }
        if !self.inputs.is_empty() {
            if let Some(extra) = served
                .inputs
                .iter()
                .find(|input| !self.inputs.iter().any(|ours| ours.name == input.name))
            {
                return Err(format!(
                    "{} says model {:?} also takes input {:?}, which {} does not name",
                    served.origin, served.model, extra.name, self.origin
                ));
            }
        }
        Ok(())
    }

    /// Whether this (served) contract can answer what a class asks for: its
    /// `version`, if the class names one and the server lists versions, and
    /// each of its `requested` outputs, if the server lists outputs.
    pub fn serves(&self, version: &str, requested: &[String]) -> Result<(), String> {
        if !version.is_empty()
            && !self.versions.is_empty()
            && !self.versions.iter().any(|known| known == version)
        {
            return Err(format!(
                "model {:?} has no version {version:?} (versions in {}: {:?})",
                self.model, self.origin, self.versions
            ));
        }
        if self.outputs.is_empty() {
            return Ok(());
        }
        if let Some(missing) = requested
            .iter()
            .find(|name| !self.outputs.iter().any(|output| &output.name == *name))
        {
            return Err(format!(
                "output {missing:?} is asked for, model {:?} has none such in {} (its outputs: {})",
                self.model,
                self.origin,
                names(&self.outputs)
            ));
        }
        Ok(())
    }

    /// Checks a job's inputs before they are sent: each is one the model takes,
    /// of its datatype and shape, and none it takes is left out.
    pub fn check_inputs(&self, inputs: &[InferInputTensor]) -> Result<(), String> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        for input in inputs {
            let Some(expected) = self.inputs.iter().find(|known| known.name == input.name) else {
                return Err(format!(
                    "input {:?} is not an input of model {:?} according to {} (it takes {})",
                    input.name,
                    self.model,
                    self.origin,
                    names(&self.inputs)
                ));
            };
            if expected.datatype != input.datatype || !shapes_agree(&expected.shape, &input.shape) {
                return Err(format!(
                    "input {:?} is {} {}, model {:?} takes {} {} according to {}",
                    input.name,
                    input.datatype,
                    ShapeText(&input.shape),
                    self.model,
                    expected.datatype,
                    ShapeText(&expected.shape),
                    self.origin
                ));
            }
        }
        if inputs.len() < self.inputs.len() {
            if let Some(missing) = self
                .inputs
                .iter()
                .find(|known| !inputs.iter().any(|input| input.name == known.name))
            {
                return Err(format!(
                    "model {:?} takes input {:?} according to {}, and the data source sent none such",
                    self.model, missing.name, self.origin
                ));
            }
        }
        Ok(())
    }

    /// Checks a model's answer: each output is one the contract names, of its
    /// datatype and shape.
    pub fn check_outputs(&self, outputs: &[Output]) -> Result<(), String> {
        if self.outputs.is_empty() {
            return Ok(());
        }
        for output in outputs {
            let Some(expected) = self.outputs.iter().find(|known| known.name == output.name) else {
                return Err(format!(
                    "output {:?} is not an output of model {:?} according to {} (its outputs: {})",
                    output.name,
                    self.model,
                    self.origin,
                    names(&self.outputs)
                ));
            };
            if expected.datatype != output.datatype || !shapes_agree(&expected.shape, &output.shape)
            {
                return Err(format!(
                    "output {:?} is {} {}, model {:?} gives {} {} according to {}",
                    output.name,
                    output.datatype,
                    ShapeText(&output.shape),
                    self.model,
                    expected.datatype,
                    ShapeText(&expected.shape),
                    self.origin
                ));
            }
        }
        Ok(())
    }

    /// One line for the log: `inputs INPUT0 FP32 [-1, -1]; outputs max FP32 [-1, 1], …`.
    pub fn describe(&self) -> String {
        let list = |tensors: &[TensorContract]| {
            if tensors.is_empty() {
                return "none described".to_string();
            }
            let each: Vec<String> = tensors
                .iter()
                .map(|tensor| {
                    format!(
                        "{} {} {}",
                        tensor.name,
                        tensor.datatype,
                        ShapeText(&tensor.shape)
                    )
                })
                .collect();
            each.join(", ")
        };
        format!(
            "inputs {}; outputs {}",
            list(&self.inputs),
            list(&self.outputs)
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> TensorContract {
        TensorContract {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    fn node() -> Arc<str> {
        "127.0.0.1:9000".into()
    }

    fn served() -> Contract {
        Contract {
            model: "rowstats".into(),
            inputs: vec![tensor("INPUT0", "FP32", &[-1, -1])],
            outputs: vec![
                tensor("max", "FP32", &[-1, 1]),
                tensor("l2", "FP32", &[-1, 1]),
            ],
            versions: vec!["1".into()],
            origin: Origin::Metadata(node()),
        }
    }

    fn configured(inputs: Vec<TensorContract>, outputs: Vec<TensorContract>) -> Contract {
        Contract {
            model: "rowstats".into(),
            inputs,
            outputs,
            versions: Vec::new(),
            origin: Origin::Config,
        }
    }

    fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_config_agreeing_with_the_metadata_passes_and_each_difference_is_named() {
        let ours = configured(
            vec![tensor("INPUT0", "FP32", &[4, 256])],
            vec![tensor("l2", "FP32", &[4, 1])],
        );
        assert_eq!(ours.agrees_with(&served()), Ok(()));

        let wrong_type = configured(vec![tensor("INPUT0", "FP64", &[4, 256])], vec![]);
        assert_eq!(
            wrong_type.agrees_with(&served()).unwrap_err(),
            "input \"INPUT0\" is FP64 [4, 256] in the class's contract in the config, \
             FP32 [-1, -1] in ModelMetadata of 127.0.0.1:9000"
        );
        let wrong_rank = configured(vec![], vec![tensor("max", "FP32", &[4])]);
        assert!(wrong_rank
            .agrees_with(&served())
            .unwrap_err()
            .starts_with("output \"max\" is FP32 [4] in the class's contract"));
        let unknown = configured(vec![tensor("IMAGE", "FP32", &[1])], vec![]);
        assert_eq!(
            unknown.agrees_with(&served()).unwrap_err(),
            "the class's contract in the config names input \"IMAGE\", ModelMetadata of \
             127.0.0.1:9000 has no such input (its inputs: \"INPUT0\")"
        );
        let mut two_inputs = served();
        two_inputs.inputs.push(tensor("MASK", "BOOL", &[-1]));
        assert!(ours
            .agrees_with(&two_inputs)
            .unwrap_err()
            .contains("also takes input \"MASK\""));
        // A server that describes nothing cannot disagree.
        let mut silent = served();
        silent.inputs.clear();
        silent.outputs.clear();
        assert_eq!(unknown.agrees_with(&silent), Ok(()));
    }

    #[test]
    fn versions_and_requested_outputs_must_be_served() {
        let served = served();
        assert_eq!(served.serves("", &[]), Ok(()));
        assert_eq!(served.serves("1", &["max".into(), "l2".into()]), Ok(()));
        assert_eq!(
            served.serves("2", &[]).unwrap_err(),
            "model \"rowstats\" has no version \"2\" (versions in ModelMetadata of \
             127.0.0.1:9000: [\"1\"])"
        );
        assert!(served
            .serves("", &["mean".into()])
            .unwrap_err()
            .contains("output \"mean\" is asked for"));
        let unversioned = Contract {
            versions: Vec::new(),
            ..served
        };
        assert_eq!(unversioned.serves("7", &[]), Ok(()));
    }

    #[test]
    fn inputs_are_checked_by_name_datatype_and_shape() {
        let contract = served();
        assert_eq!(
            contract.check_inputs(&[input("INPUT0", "FP32", &[4, 256])]),
            Ok(())
        );
        assert_eq!(
            contract
                .check_inputs(&[input("INPUT0", "FP64", &[4, 256])])
                .unwrap_err(),
            "input \"INPUT0\" is FP64 [4, 256], model \"rowstats\" takes FP32 [-1, -1] \
             according to ModelMetadata of 127.0.0.1:9000"
        );
        assert!(contract
            .check_inputs(&[input("INPUT0", "FP32", &[1024])])
            .unwrap_err()
            .contains("is FP32 [1024], model \"rowstats\" takes FP32 [-1, -1]"));
        assert!(contract
            .check_inputs(&[input("IMAGE", "FP32", &[4, 256])])
            .unwrap_err()
            .contains("input \"IMAGE\" is not an input of model \"rowstats\""));
        assert!(contract
            .check_inputs(&[])
            .unwrap_err()
            .contains("takes input \"INPUT0\""));
        let open = configured(vec![], vec![]);
        assert_eq!(open.check_inputs(&[input("x", "BYTES", &[1])]), Ok(()));
    }

    #[test]
    fn outputs_are_checked_by_name_datatype_and_shape() {
        let contract = served();
        let output = |name: &str, datatype: &str, shape: &[i64]| Output {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            bytes: Bytes::new(),
        };
        assert_eq!(
            contract.check_outputs(&[
                output("max", "FP32", &[4, 1]),
                output("l2", "FP32", &[4, 1])
            ]),
            Ok(())
        );
        assert!(contract
            .check_outputs(&[output("max", "FP32", &[4, 2])])
            .unwrap_err()
            .starts_with("output \"max\" is FP32 [4, 2], model \"rowstats\" gives FP32 [-1, 1]"));
        assert!(contract
            .check_outputs(&[output("mean", "FP32", &[4, 1])])
            .unwrap_err()
            .contains("not an output of model"));
    }

    #[test]
    fn metadata_becomes_a_contract_and_describes_itself() {
        let metadata = ModelMetadataResponse {
            name: "rowstats".into(),
            versions: vec!["1".into()],
            platform: "mlserver".into(),
            inputs: vec![TensorMetadata {
                name: "INPUT0".into(),
                datatype: "FP32".into(),
                shape: vec![-1, -1],
            }],
            outputs: vec![
                TensorMetadata {
                    name: "max".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 1],
                },
                TensorMetadata {
                    name: "l2".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 1],
                },
            ],
        };
        let contract = Contract::from_metadata(&metadata, node());
        assert_eq!(contract, served());
        assert_eq!(
            contract.describe(),
            "inputs INPUT0 FP32 [-1, -1]; outputs max FP32 [-1, 1], l2 FP32 [-1, 1]"
        );
    }
}
