//! The request paths (`/package.Service/Method`) percore calls and the mocks serve.

/// percore's data source: one device's raw input for one tick.
pub const FETCH: &str = "/percore.source.v1.DataSource/Fetch";
/// KServe v2: run the model on one request.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// KServe v2: whether the server is up at all.
pub const SERVER_LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
/// KServe v2: whether the server is ready to take inference requests.
pub const SERVER_READY: &str = "/inference.GRPCInferenceService/ServerReady";
/// KServe v2: whether one model (and version) is loaded and ready.
pub const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";
/// KServe v2: a model's name, versions, inputs and outputs (datatypes, shapes).
pub const MODEL_METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";
/// The standard gRPC health check, for nodes that implement it.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
