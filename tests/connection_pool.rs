//! A shard's connection pool against a real HTTP/2 peer: it opens another
//! connection when a connection's `max_concurrent_streams` is full (and no more
//! than its limit), and messages larger than the HTTP/2 windows go through flow
//! control intact in both directions.

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use percore::grpc::client::ClientSettings;
use percore::mock::{mock_model_output, mock_payload, MockKind, MockOptions, ServiceTime};
use percore::proto::inference::model_infer_request::InferInputTensor;
use percore::proto::inference::{ModelInferRequest, ModelInferResponse};
use percore::proto::source::{FetchRequest, FetchResponse};
use percore::runtime::{self, ExecutorSpec};
use percore::upstream::NodePool;

fn infer_request(raw: Bytes) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "UINT8".into(),
            shape: vec![1, raw.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

/// Runs `test` on a fresh executor and returns its result.
fn on_executor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    test: impl FnOnce() -> F + Send + 'static,
) -> T {
    let spec = ExecutorSpec {
        name: "pc-test".into(),
        cpu: None,
        io_memory_bytes: common::MOCK_IO_MEMORY,
    };
    runtime::start(&spec, test)
        .expect("an executor starts")
        .join()
        .expect("the executor finishes")
}

#[test]
fn full_connections_make_the_pool_open_another_up_to_its_limit() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            // Two streams per connection, and calls long enough to overlap.
            max_concurrent_streams: 2,
            service_time: ServiceTime::Fixed(Duration::from_millis(200)),
            ..MockOptions::default()
        },
    );
    let addr = compute.addr;
    let (results, connections) = on_executor(move || async move {
        let pool = NodePool::new(&addr.into(), 3, Rc::new(ClientSettings::default()), 0);
        let calls: Vec<_> = (0..8u8)
            .map(|i| {
                let pool = pool.clone();
                runtime::spawn(async move {
                    let connection = pool.connection().await?;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let request = infer_request(Bytes::from(vec![i; 16]));
                    connection
                        .unary::<_, ModelInferResponse>(
                            pool.infer_uri(),
                            &request,
                            deadline,
                            1 << 20,
                        )
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await);
        }
        (results, pool.open_connections())
    });
    compute.stop();
    assert_eq!(
        connections, 3,
        "2 streams each: 8 calls need more than 3, limit is 3"
    );
    for (i, result) in results.into_iter().enumerate() {
        let response = result.unwrap_or_else(|error| panic!("call {i} failed: {error:?}"));
        let expected = mock_model_output(&[i as u8; 16]);
        let mut bytes = Vec::new();
        expected
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        assert_eq!(&response.raw_output_contents[0][..], &bytes[..], "call {i}");
    }
}

#[test]
fn messages_larger_than_the_flow_control_windows_arrive_intact() {
    // 3 MiB: three times the 1 MiB stream window each side announces.
    const PAYLOAD: usize = 3 << 20;
    let options = MockOptions {
        payload_bytes: PAYLOAD,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let compute = common::start_mock(MockKind::Compute, options);
    let (source_addr, compute_addr) = (source.addr, compute.addr);
    let (fetched, inferred) = on_executor(move || async move {
        let settings = Rc::new(ClientSettings::default());
        let deadline = Instant::now() + Duration::from_secs(20);
        let source = NodePool::new(&source_addr.into(), 1, settings.clone(), 0);
        let connection = source.connection().await.expect("connects to the source");
        let request = FetchRequest {
            device_id: "dev-big".into(),
            class: "camera".into(),
            tick_unix_ms: 1,
        };
        let fetched: FetchResponse = connection
            .unary(source.fetch_uri(), &request, deadline, 4 << 20)
            .await
            .expect("the large fetch succeeds");
        let compute = NodePool::new(&compute_addr.into(), 1, settings, 0);
        let connection = compute.connection().await.expect("connects to compute");
        let inferred: ModelInferResponse = connection
            .unary(
                compute.infer_uri(),
                &infer_request(fetched.raw.clone()),
                deadline,
                4 << 20,
            )
            .await
            .expect("the large infer succeeds");
        (fetched, inferred)
    });
    source.stop();
    compute.stop();
    let expected = mock_payload("dev-big", PAYLOAD);
    assert_eq!(fetched.raw.len(), PAYLOAD);
    assert!(
        fetched.raw == expected,
        "the fetched tensor differs from what was sent"
    );
    let [sum, len] = mock_model_output(&expected);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&sum.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    assert_eq!(
        &inferred.raw_output_contents[0][..],
        &bytes[..],
        "compute saw other bytes"
    );
}
