//! The mock nodes' faults and probes, seen through percore's own client: what
//! another test (balancing, ejection, health probes, hostile replies) can count
//! on when it sets a fault. Readiness flips with the control and with the flag
//! file, errors come with the chosen code, added latency is paid, resets,
//! oversized answers and bytes that are not HTTP/2 fail the way they should,
//! and `calls()` counts each replica's share.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use prost::Message;

use percore::error::ErrorKind;
use percore::grpc::client::{ClientSettings, Connection, Traffic};
use percore::grpc::methods;
use percore::grpc::status::Code;
use percore::mock::{
    mock_model_output, mock_payload, MockControl, MockKind, MockNode, MockOptions,
};
use percore::proto::health::health_check_response::ServingStatus;
use percore::proto::health::{HealthCheckRequest, HealthCheckResponse};
use percore::proto::inference::model_infer_request::InferInputTensor;
use percore::proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelReadyRequest, ModelReadyResponse,
    ServerLiveRequest, ServerLiveResponse, ServerReadyRequest, ServerReadyResponse,
};
use percore::proto::source::{FetchRequest, FetchResponse};
use percore::runtime::{self, ExecutorSpec};

/// The message limit of calls that do not test it: far above any mock answer.
const ROOMY: usize = 4 << 20;

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

/// Opens one client connection to `node`, as a shard would.
async fn open(node: SocketAddr) -> Connection {
    match Connection::open(
        &percore::endpoint::Endpoint::from(node).connector(),
        &ClientSettings::default(),
        Rc::new(Traffic::default()),
    )
    .await
    {
        Ok(connection) => connection,
        Err(error) => panic!("cannot connect to {node}: {error}"),
    }
}

/// One unary call on `path` of the connection's node, with a generous deadline.
async fn call<Req: Message, Resp: Message + Default>(
    connection: &Connection,
    path: &str,
    request: &Req,
    max_message_len: usize,
) -> Result<Resp, ErrorKind> {
    let uri: Uri = format!("http://{}{path}", connection.node())
        .parse()
        .expect("a valid URI");
    let deadline = Instant::now() + Duration::from_secs(5);
    connection
        .unary(&uri, request, deadline, max_message_len)
        .await
}

fn infer_request(model: &str, raw: Bytes) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
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

async fn infer(connection: &Connection, max: usize) -> Result<ModelInferResponse, ErrorKind> {
    let request = infer_request("m", Bytes::from_static(&[1, 2, 3]));
    call(connection, methods::MODEL_INFER, &request, max).await
}

async fn fetch(connection: &Connection, max: usize) -> Result<FetchResponse, ErrorKind> {
    let request = FetchRequest {
        device_id: "dev-1".into(),
        class: "meter".into(),
        tick_unix_ms: 1,
    };
    call(connection, methods::FETCH, &request, max).await
}

/// The mock model's answer to [`infer`], as little-endian bytes.
fn expected_output() -> Vec<u8> {
    mock_model_output(&[1, 2, 3])
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// What the readiness probes of a compute node say, asked about model `m`.
#[derive(Debug, PartialEq)]
struct Probes {
    /// ServerReady.
    server_ready: bool,
    /// ServerLive.
    live: bool,
    /// ModelReady of "m".
    model_ready: bool,
    /// Health/Check of "" (the server).
    health: ServingStatus,
    /// Health/Check of "m" (the model).
    model_health: ServingStatus,
}

async fn health(connection: &Connection, service: &str) -> Result<ServingStatus, ErrorKind> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let response: HealthCheckResponse =
        call(connection, methods::HEALTH_CHECK, &request, ROOMY).await?;
    Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
}

async fn model_ready(connection: &Connection, name: &str) -> Result<bool, ErrorKind> {
    let request = ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    let response: ModelReadyResponse =
        call(connection, methods::MODEL_READY, &request, ROOMY).await?;
    Ok(response.ready)
}

async fn probes(connection: &Connection) -> Probes {
    let ready: ServerReadyResponse = call(
        connection,
        methods::SERVER_READY,
        &ServerReadyRequest {},
        ROOMY,
    )
    .await
    .expect("ServerReady answers");
    let live: ServerLiveResponse = call(
        connection,
        percore::grpc::methods::SERVER_LIVE,
        &ServerLiveRequest {},
        ROOMY,
    )
    .await
    .expect("ServerLive answers");
    Probes {
        server_ready: ready.ready,
        live: live.live,
        model_ready: model_ready(connection, "m")
            .await
            .expect("ModelReady answers"),
        health: health(connection, "").await.expect("Health/Check answers"),
        model_health: health(connection, "m")
            .await
            .expect("Health/Check of the model answers"),
    }
}

fn all_ready() -> Probes {
    Probes {
        server_ready: true,
        live: true,
        model_ready: true,
        health: ServingStatus::Serving,
        model_health: ServingStatus::Serving,
    }
}

fn is_status(result: &Result<impl std::fmt::Debug, ErrorKind>, expected: Code) -> bool {
    matches!(result, Err(ErrorKind::Status { code, .. }) if *code == expected)
}

#[test]
fn readiness_probes_follow_the_control_and_skip_every_fault() {
    // Every work call fails or hangs for a minute; probes must not notice.
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            model: Some("m".into()),
            error_rate: 0.5,
            hang_rate: 0.5,
            ..MockOptions::default()
        },
    );
    let control = compute.control();
    control.set_added_latency(Duration::from_secs(60));
    let addr = compute.addr;
    let seen = on_executor(move || async move {
        let connection = open(addr).await;
        let mut seen = vec![probes(&connection).await];
        control.set_ready(false);
        seen.push(probes(&connection).await);
        control.set_ready(true);
        control.set_model_ready(false);
        seen.push(probes(&connection).await);
        control.set_model_ready(true);
        seen.push(probes(&connection).await);
        let unknown_model = model_ready(&connection, "other").await;
        let unknown_service = health(&connection, "no.such.Service").await;
        let service_name = health(&connection, "inference.GRPCInferenceService").await;
        (seen, unknown_model, unknown_service, service_name)
    });
    let calls = compute.control().calls();
    compute.stop();
    let (seen, unknown_model, unknown_service, service_name) = seen;
    assert_eq!(seen[0], all_ready(), "a fresh node");
    assert_eq!(
        seen[1],
        Probes {
            server_ready: false,
            live: true,
            model_ready: false,
            health: ServingStatus::NotServing,
            model_health: ServingStatus::NotServing,
        },
        "after set_ready(false): a node out of service serves no model either"
    );
    assert_eq!(
        seen[2],
        Probes {
            model_ready: false,
            model_health: ServingStatus::NotServing,
            ..all_ready()
        },
        "after set_model_ready(false)"
    );
    assert_eq!(seen[3], all_ready(), "after both are ready again");
    assert!(
        is_status(&unknown_model, Code::NOT_FOUND),
        "ModelReady of an unknown model: {unknown_model:?}"
    );
    assert!(
        is_status(&unknown_service, Code::NOT_FOUND),
        "Health/Check of an unknown service: {unknown_service:?}"
    );
    assert_eq!(service_name, Ok(ServingStatus::Serving));
    assert_eq!(calls, 0, "probes are not counted as calls");
}

#[test]
fn readiness_is_off_while_the_flag_file_exists() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let flag = dir.path().join("not-ready");
    let options = MockOptions {
        not_ready_file: Some(flag.clone()),
        ..MockOptions::default()
    };
    let compute = common::start_mock(MockKind::Compute, options.clone());
    let source = common::start_mock(MockKind::Source, options);
    let (compute_addr, source_addr) = (compute.addr, source.addr);
    let seen = on_executor(move || async move {
        let compute = open(compute_addr).await;
        let source = open(source_addr).await;
        let mut seen = Vec::new();
        for present in [false, true, false] {
            if present {
                std::fs::write(&flag, b"draining\n").expect("the flag file is written");
            } else {
                let _ = std::fs::remove_file(&flag);
            }
            seen.push((
                probes(&compute).await,
                health(&source, "").await,
                health(&source, "percore.source.v1.DataSource").await,
            ));
        }
        seen
    });
    compute.stop();
    source.stop();
    let serving = Ok(ServingStatus::Serving);
    let not_serving = Ok(ServingStatus::NotServing);
    assert_eq!(seen[0], (all_ready(), serving.clone(), serving.clone()));
    assert_eq!(
        seen[1],
        (
            Probes {
                server_ready: false,
                live: true,
                model_ready: false,
                health: ServingStatus::NotServing,
                model_health: ServingStatus::NotServing,
            },
            not_serving.clone(),
            not_serving,
        ),
        "while the flag file exists"
    );
    assert_eq!(seen[2], (all_ready(), serving.clone(), serving));
}

#[test]
fn an_error_rate_answers_with_its_code_and_can_change_while_serving() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            error_rate: 1.0,
            error_code: Code::UNAVAILABLE,
            ..MockOptions::default()
        },
    );
    let source = common::start_mock(
        MockKind::Source,
        MockOptions {
            error_rate: 1.0,
            error_code: Code::RESOURCE_EXHAUSTED,
            ..MockOptions::default()
        },
    );
    let control = compute.control();
    let (compute_addr, source_addr) = (compute.addr, source.addr);
    let (first, fetched, changed, half, healed) = on_executor(move || async move {
        let compute = open(compute_addr).await;
        let first = infer(&compute, ROOMY).await;
        let fetched = fetch(&open(source_addr).await, ROOMY).await;
        control.set_error_rate(1.0, Code(99));
        let changed = infer(&compute, ROOMY).await;
        control.set_error_rate(0.5, Code::INTERNAL);
        let mut half = (0, 0);
        for _ in 0..200 {
            match infer(&compute, ROOMY).await {
                Ok(_) => half.0 += 1,
                Err(ErrorKind::Status {
                    code: Code::INTERNAL,
                    ..
                }) => half.1 += 1,
                Err(other) => panic!("an error-rate call failed otherwise: {other:?}"),
            }
        }
        control.set_error_rate(0.0, Code::INTERNAL);
        let healed = infer(&compute, ROOMY).await;
        (first, fetched, changed, half, healed)
    });
    let (compute_calls, source_calls) = (compute.control().calls(), source.control().calls());
    compute.stop();
    source.stop();
    assert!(is_status(&first, Code::UNAVAILABLE), "{first:?}");
    assert!(is_status(&fetched, Code::RESOURCE_EXHAUSTED), "{fetched:?}");
    assert!(is_status(&changed, Code(99)), "{changed:?}");
    // The mock's draws are seeded: this is the same every run, and loose.
    assert!(
        (60..=140).contains(&half.1),
        "rate 0.5 over 200 calls: (ok, failed) = {half:?}"
    );
    match healed {
        Ok(response) => assert_eq!(&response.raw_output_contents[0][..], expected_output()),
        Err(error) => panic!("rate 0 still fails: {error:?}"),
    }
    assert_eq!(
        (compute_calls, source_calls),
        (203, 1),
        "failed calls count too"
    );
}

#[test]
fn added_latency_is_paid_by_every_answer() {
    const ADDED: Duration = Duration::from_millis(150);
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let control = source.control();
    let addr = source.addr;
    let timed = on_executor(move || async move {
        let connection = open(addr).await;
        fetch(&connection, ROOMY).await.expect("a first fetch");
        control.set_added_latency(ADDED);
        let mut timed = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let result = fetch(&connection, ROOMY).await;
            timed.push((start.elapsed(), result.is_ok()));
        }
        // Probes are answered at once: a 60 s latency would pass the deadline.
        control.set_added_latency(Duration::from_secs(60));
        let probe = health(&connection, "").await;
        (timed, probe)
    });
    assert_eq!(source.control().added_latency(), Duration::from_secs(60));
    source.stop();
    let (timed, probe) = timed;
    for (elapsed, ok) in timed {
        assert!(ok, "a slowed fetch still answers");
        assert!(
            elapsed >= ADDED,
            "a fetch took {elapsed:?}, under {ADDED:?}"
        );
    }
    assert_eq!(probe, Ok(ServingStatus::Serving));
}

#[test]
fn a_reset_rate_resets_streams_but_not_the_connection() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            reset_rate: 1.0,
            ..MockOptions::default()
        },
    );
    let control = compute.control();
    let addr = compute.addr;
    let (reset, still_open, after) = on_executor(move || async move {
        let connection = open(addr).await;
        let reset = infer(&connection, ROOMY).await;
        let still_open = !connection.is_closed();
        control.set_reset_rate(0.0);
        let after = infer(&connection, ROOMY).await;
        (reset, still_open, after)
    });
    let calls = compute.control().calls();
    compute.stop();
    match &reset {
        Err(ErrorKind::ConnectionLost { detail, .. }) => assert!(
            detail.contains("internal error"),
            "the reset carries INTERNAL_ERROR: {detail}"
        ),
        other => panic!("a reset stream gave {other:?}"),
    }
    assert!(still_open, "a stream reset must not close the connection");
    match after {
        Ok(response) => assert_eq!(&response.raw_output_contents[0][..], expected_output()),
        Err(error) => panic!("the same connection fails after the resets stop: {error:?}"),
    }
    assert_eq!(calls, 2);
}

#[test]
fn oversized_replies_exceed_the_message_limit_and_are_valid_otherwise() {
    const TARGET: usize = 256 << 10;
    const LIMIT: usize = 64 << 10;
    let options = MockOptions {
        oversized_reply_bytes: Some(TARGET),
        payload_bytes: 100,
        ..MockOptions::default()
    };
    let compute = common::start_mock(MockKind::Compute, options.clone());
    let source = common::start_mock(MockKind::Source, options);
    let (compute_addr, source_addr) = (compute.addr, source.addr);
    let (too_large, fetch_too_large, inferred, fetched) = on_executor(move || async move {
        let compute = open(compute_addr).await;
        let source = open(source_addr).await;
        (
            infer(&compute, LIMIT).await,
            fetch(&source, LIMIT).await,
            infer(&compute, ROOMY).await,
            fetch(&source, ROOMY).await,
        )
    });
    compute.stop();
    source.stop();
    for (name, result) in [
        ("infer", too_large.map(|_| ())),
        ("fetch", fetch_too_large.map(|_| ())),
    ] {
        match result {
            Err(ErrorKind::MessageTooLarge { len, max }) => {
                assert!(len >= TARGET, "{name}: a {len}-byte answer");
                assert_eq!(max, LIMIT, "{name}");
            }
            other => panic!("{name}: an oversized answer gave {other:?}"),
        }
    }
    match inferred {
        Ok(response) => assert_eq!(&response.raw_output_contents[0][..], expected_output()),
        Err(error) => panic!("a padded infer answer within the limit: {error:?}"),
    }
    match fetched {
        Ok(response) => assert_eq!(response.raw, mock_payload("dev-1", 100)),
        Err(error) => panic!("a padded fetch answer within the limit: {error:?}"),
    }
}

#[test]
fn garbage_after_calls_breaks_the_connection_and_the_node_serves_new_ones() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            garbage_after_calls: Some(2),
            ..MockOptions::default()
        },
    );
    let addr = compute.addr;
    let (answered, broken, closed, probed, fresh) = on_executor(move || async move {
        let first = open(addr).await;
        let answered = [
            infer(&first, ROOMY).await.is_ok(),
            infer(&first, ROOMY).await.is_ok(),
        ];
        let broken = infer(&first, ROOMY).await;
        // The driver task marks the connection closed once h2 gives up on it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !first.is_closed() && Instant::now() < deadline {
            runtime::sleep(Duration::from_millis(10)).await;
        }
        let closed = first.is_closed();
        // Probes do not bring the fault nearer: two calls still pass after them.
        let second = open(addr).await;
        for _ in 0..5 {
            health(&second, "").await.expect("a probe answers");
        }
        let probed = [
            infer(&second, ROOMY).await.is_ok(),
            infer(&second, ROOMY).await.is_ok(),
        ];
        let fresh = infer(&open(addr).await, ROOMY).await;
        (answered, broken, closed, probed, fresh)
    });
    let calls = compute.control().calls();
    compute.stop();
    assert_eq!(answered, [true, true], "the calls before the fault");
    assert!(
        matches!(
            broken,
            Err(ErrorKind::ConnectionLost { .. } | ErrorKind::Refused { .. })
        ),
        "bytes that are not HTTP/2 must break the connection: {broken:?}"
    );
    assert!(
        closed,
        "the client's connection is closed after the garbage"
    );
    assert_eq!(probed, [true, true], "probes do not count toward the fault");
    assert!(fresh.is_ok(), "a new connection is served: {fresh:?}");
    assert_eq!(
        calls, 5,
        "the call answered with garbage never reached the mock"
    );
}

/// The client side of an HTTP/2 connection, by hand: the preface, an empty
/// SETTINGS frame, and one ModelInfer request as a HEADERS frame that ends the
/// stream (HPACK literals, no Huffman, no dynamic table).
fn raw_http2_request() -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    let path = methods::MODEL_INFER.as_bytes();
    block.push(0x04); // literal :path, not indexed
    block.push(path.len() as u8);
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x0f, 0x10, 16]); // literal content-type (index 31)
    block.extend_from_slice(b"application/grpc");
    block.extend_from_slice(&[0x00, 2]);
    block.extend_from_slice(b"te");
    block.push(8);
    block.extend_from_slice(b"trailers");
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let len = (block.len() as u32).to_be_bytes();
    // HEADERS on stream 1, END_STREAM | END_HEADERS.
    bytes.extend_from_slice(&[len[1], len[2], len[3], 0x01, 0x05, 0, 0, 0, 1]);
    bytes.extend_from_slice(&block);
    bytes
}

#[test]
fn garbage_is_real_bytes_after_the_servers_http2_frames() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            garbage_after_calls: Some(0),
            ..MockOptions::default()
        },
    );
    let mut socket = std::net::TcpStream::connect(compute.addr).expect("connects");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    socket
        .write_all(&raw_http2_request())
        .expect("the request is sent");
    let mut received = Vec::new();
    let read = socket.read_to_end(&mut received);
    compute.stop();
    assert!(read.is_ok(), "the mock closes the socket: {read:?}");
    assert_eq!(
        received.get(3),
        Some(&0x04),
        "the server's first frame is its SETTINGS: {received:?}"
    );
    assert!(
        received.ends_with(percore::grpc::server::NOT_HTTP2),
        "the connection ends with the injected bytes: {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[test]
fn http1_only_answers_the_preface_as_an_http1_server() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            http1_only: true,
            ..MockOptions::default()
        },
    );
    let addr = compute.addr;
    // The raw bytes first: an HTTP/1.1 answer to the HTTP/2 preface.
    let mut socket = std::net::TcpStream::connect(addr).expect("connects");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("the preface is sent");
    let mut answer = Vec::new();
    let read = socket.read_to_end(&mut answer);
    let opened = on_executor(move || async move {
        Connection::open(
            &percore::endpoint::Endpoint::from(addr).connector(),
            &ClientSettings::default(),
            Rc::new(Traffic::default()),
        )
        .await
        .map(|_| ())
    });
    let calls = compute.control().calls();
    compute.stop();
    assert!(read.is_ok(), "the mock closes the socket: {read:?}");
    assert!(
        answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
        "answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        opened.is_err(),
        "an HTTP/2 client must not get a connection"
    );
    assert_eq!(calls, 0);
}

#[test]
fn calls_count_each_replicas_share_over_all_its_executors() {
    let start = |executors: &[Option<usize>]| -> MockNode {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let options = MockOptions::default();
        match MockNode::start(
            MockKind::Compute,
            any,
            executors,
            common::MOCK_IO_MEMORY,
            options,
        ) {
            Ok(node) => node,
            Err(error) => panic!("cannot start a mock: {error}"),
        }
    };
    // Two executors share one port: their calls add up in one control.
    let wide = start(&[None, None]);
    let narrow = start(&[None]);
    let (wide_addr, narrow_addr) = (wide.addr, narrow.addr);
    let controls: [Arc<MockControl>; 2] = [wide.control(), narrow.control()];
    let failures = on_executor(move || async move {
        let mut failures = 0;
        for (addr, connections, per_connection) in [(wide_addr, 6, 5), (narrow_addr, 2, 3)] {
            for _ in 0..connections {
                let connection = open(addr).await;
                health(&connection, "").await.expect("a probe answers");
                for _ in 0..per_connection {
                    failures += usize::from(infer(&connection, ROOMY).await.is_err());
                }
            }
        }
        failures
    });
    let counted = [controls[0].calls(), controls[1].calls()];
    wide.stop();
    narrow.stop();
    assert_eq!(failures, 0);
    assert_eq!(counted, [30, 6], "calls per replica");
}

use common::MockProcess;

#[test]
fn the_cli_flags_reach_the_mock() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let flag = dir.path().join("not-ready");
    let flag_arg = flag.to_str().expect("a UTF-8 path").to_string();
    let mock = MockProcess::start(&[
        "mock-compute",
        "--listen",
        "127.0.0.1:0",
        "--model",
        "m",
        "--not-ready-file",
        &flag_arg,
        "--error-rate",
        "1",
        "--error-code",
        "resource_exhausted",
        "--oversized-reply-bytes",
        "100000",
    ]);
    let addr = mock.addr;
    let seen = on_executor(move || async move {
        let connection = open(addr).await;
        let before = probes(&connection).await;
        std::fs::write(&flag, b"").expect("the flag file is written");
        let during = probes(&connection).await;
        let failed = infer(&connection, ROOMY).await;
        (before, during, failed)
    });
    drop(mock);
    let (before, during, failed) = seen;
    assert_eq!(before, all_ready());
    assert!(!during.server_ready && !during.model_ready, "{during:?}");
    assert!(is_status(&failed, Code::RESOURCE_EXHAUSTED), "{failed:?}");
}

#[test]
fn bad_fault_flags_are_refused_with_one_clear_line() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(args)
            .output()
            .expect("the binary runs")
    };
    let bad_code = run(&["mock-compute", "--error-code", "SOMETIMES"]);
    assert!(!bad_code.status.success());
    let stderr = String::from_utf8_lossy(&bad_code.stderr);
    assert!(stderr.contains("not a gRPC status code"), "{stderr}");
    let too_much = run(&["mock-source", "--error-rate", "0.6", "--reset-rate", "0.6"]);
    assert_eq!(too_much.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&too_much.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("at most 1"),
        "{stderr}"
    );
    let ok_is_no_error = run(&["mock-source", "--error-code", "OK"]);
    assert_eq!(ok_is_no_error.status.code(), Some(1));
}
