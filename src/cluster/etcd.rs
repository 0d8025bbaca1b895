//! A small etcd v3 client: the calls percore makes, over tonic, on the control
//! plane's tokio runtime (never on a shard).
//!
//! [`Etcd`] holds one lazily connected channel per endpoint and uses one at a
//! time; a caller that gets an [`EtcdError`] that says etcd may answer
//! elsewhere ([`EtcdError::is_unavailable`]) moves to the next endpoint with
//! [`Etcd::rotate`] and tries again after its backoff. Every unary call is
//! bounded by the request timeout; streams (watches, lease keep-alives) carry
//! `hasleader=true`, so a member cut off from its cluster's leader ends them
//! instead of leaving them silent, and HTTP/2 PINGs notice a member that went
//! away without closing its sockets.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::proto::etcd as pb;
use pb::cluster_client::ClusterClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;

/// Time to open a TCP connection to one member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 PING interval on an etcd connection with streams open. etcd refuses
/// clients that ping more often than its `--grpc-keepalive-min-time` (5 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a PING may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an etcd call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdError {
    /// The member asked.
    pub url: String,
    /// What kind of failure, for the caller's decision.
    pub kind: EtcdErrorKind,
    /// The error's own words.
    pub detail: String,
}

/// What an [`EtcdError`] means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdErrorKind {
    /// No answer: connection refused or lost, timeout, no leader. Another
    /// member, or the same one later, may answer.
    Unavailable,
    /// The revision asked for was compacted away: read the current state.
    Compacted,
    /// The lease does not exist (expired or revoked).
    LeaseNotFound,
    /// etcd answered with an error that asking again will not change.
    Refused,
}

impl EtcdError {
    fn from_status(url: &str, status: tonic::Status) -> EtcdError {
        use tonic::Code;
        let message = status.message().to_string();
        let kind = match status.code() {
            _ if message.contains("compacted") => EtcdErrorKind::Compacted,
            _ if message.contains("lease not found") => EtcdErrorKind::LeaseNotFound,
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal => EtcdErrorKind::Unavailable,
            _ => EtcdErrorKind::Refused,
        };
        let detail = match message.is_empty() {
            true => format!("{:?}", status.code()),
            false => format!("{:?}: {message}", status.code()),
        };
        EtcdError {
            url: url.to_string(),
            kind,
            detail,
        }
    }

    /// An error of this kind, from words of our own.
    pub fn new(url: &str, kind: EtcdErrorKind, detail: impl Into<String>) -> EtcdError {
        EtcdError {
            url: url.to_string(),
            kind,
            detail: detail.into(),
        }
    }

    /// Whether another member, or the same one later, may answer.
    pub fn is_unavailable(&self) -> bool {
        self.kind == EtcdErrorKind::Unavailable
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd {}: {}", self.url, self.detail)
    }
}

impl std::error::Error for EtcdError {}

/// One etcd member percore may talk to.
struct Member {
    /// As configured (normalised to `http://host:port`), for messages.
    url: String,
    /// Connected on first use, again after a failure.
    channel: Channel,
}

/// An etcd client over a list of members, one in use at a time.
pub struct Etcd {
    /// Every configured endpoint.
    members: Vec<Member>,
    /// The one calls go to now.
    current: usize,
    /// Bound on every unary call.
    request_timeout: Duration,
}

/// A key and its value as etcd keeps them.
pub type KeyValue = pb::KeyValue;

/// A watch's event.
pub type Event = pb::Event;

/// Normalises an etcd URL as written (`http://host:port`, or `host:port`);
/// the error says what is wrong with it.
pub fn parse_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.starts_with("https://") {
        return Err(format!(
            "{text:?}: TLS to etcd is not supported yet; use an http:// URL (a local proxy can add TLS)"
        ));
    }
    let url = match text.strip_prefix("http://") {
        Some(_) => text.trim_end_matches('/').to_string(),
        None if text.contains("://") => {
            return Err(format!("{text:?}: expected http://host:port"));
        }
        None => format!("http://{}", text.trim_end_matches('/')),
    };
    let authority = &url["http://".len()..];
    let port = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok());
    match port {
        Some(port) if port > 0 && !authority.contains('/') => Ok(url),
        _ => Err(format!("{text:?}: expected http://host:port")),
    }
}

impl Etcd {
    /// A client for `urls` (checked with [`parse_url`]); connects on first use.
    /// Must be called inside a tokio runtime.
    pub fn new(urls: &[String], request_timeout: Duration) -> Result<Etcd, String> {
        if urls.is_empty() {
            return Err("no etcd URL given".into());
        }
        let mut members = Vec::with_capacity(urls.len());
        for text in urls {
            let url = parse_url(text)?;
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|error| format!("{text:?}: {error}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(false);
            members.push(Member {
                url,
                channel: endpoint.connect_lazy(),
            });
        }
        Ok(Etcd {
            members,
            current: 0,
            request_timeout,
        })
    }

    /// The member calls go to now.
    pub fn url(&self) -> &str {
        &self.members[self.current].url
    }

    /// Every configured member, for messages.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    /// Moves to the next member (after a failure of the current one).
    pub fn rotate(&mut self) {
        self.current = (self.current + 1) % self.members.len();
    }

    fn channel(&self) -> Channel {
        self.members[self.current].channel.clone()
    }

    fn error(&self, status: tonic::Status) -> EtcdError {
        EtcdError::from_status(self.url(), status)
    }

    /// Runs one unary call within the request timeout.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.error(status)),
            Err(_) => Err(EtcdError::new(
                self.url(),
                EtcdErrorKind::Unavailable,
                format!("no answer within {} ms", self.request_timeout.as_millis()),
            )),
        }
    }

    /// The keys in `[key, range_end)` (`range_end` empty: `key` alone) at the
    /// newest revision, and that revision.
    pub async fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let mut kv = KvClient::new(self.channel());
        let request = pb::RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            ..Default::default()
        };
        let response = self.bounded(kv.range(request)).await?;
        let revision = response.header.map_or(0, |h| h.revision);
        Ok((response.kvs, revision))
    }

    /// Every key starting with `prefix`, and the revision they are current at.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        self.range(
            prefix.as_bytes(),
            &super::keys::prefix_end(prefix.as_bytes()),
        )
        .await
    }

    /// Puts `value` at `key`, attached to `lease` (0: none); the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut kv = KvClient::new(self.channel());
        let request = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        };
        let response = self.bounded(kv.put(request)).await?;
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// Deletes `key` (or every key in `[key, range_end)`); how many went.
    pub async fn delete(&self, key: &[u8], range_end: &[u8]) -> Result<i64, EtcdError> {
        let mut kv = KvClient::new(self.channel());
        let request = pb::DeleteRangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            prev_kv: false,
        };
        Ok(self.bounded(kv.delete_range(request)).await?.deleted)
    }

    /// Compacts the store's history up to `revision` (watches from before it
    /// are then refused as compacted).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let mut kv = KvClient::new(self.channel());
        let request = pb::CompactionRequest {
            revision,
            physical: true,
        };
        self.bounded(kv.compact(request)).await.map(drop)
    }

    /// Puts `value` at `key` under `lease` only if the key does not exist or
    /// is already attached to `lease`; otherwise leaves it and says who holds it.
    pub async fn put_if_free(
        &self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<Claim, EtcdError> {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let mut kv = KvClient::new(self.channel());
        let request = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.to_vec(),
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
        };
        let response = self.bounded(kv.txn(request)).await?;
        if response.succeeded {
            return Ok(Claim::Ours {
                revision: response.header.map_or(0, |h| h.revision),
            });
        }
        let holder = response
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(range)) => {
                    range.kvs.into_iter().next()
                }
                _ => None,
            });
        match holder {
            Some(holder) if holder.lease != lease => Ok(Claim::Held { holder }),
            // Ours already (a re-registration), or gone since: put it.
            _ => Ok(Claim::Ours {
                revision: self.put(key, value, lease).await?,
            }),
        }
    }

    /// Grants a lease of `ttl` seconds; its id and the TTL etcd chose.
    pub async fn grant(&self, ttl: i64) -> Result<(i64, i64), EtcdError> {
        let mut lease = LeaseClient::new(self.channel());
        let response = self
            .bounded(lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }))
            .await?;
        if !response.error.is_empty() {
            return Err(EtcdError::new(
                self.url(),
                EtcdErrorKind::Refused,
                response.error,
            ));
        }
        Ok((response.id, response.ttl))
    }

    /// Revokes `lease`: every key attached to it is deleted at once. A lease
    /// that no longer exists is not an error.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = LeaseClient::new(self.channel());
        match self
            .bounded(client.lease_revoke(pb::LeaseRevokeRequest { id: lease }))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.kind == EtcdErrorKind::LeaseNotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Seconds `lease` has left; `None` when it expired or never existed.
    pub async fn time_to_live(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let mut client = LeaseClient::new(self.channel());
        let response = self
            .bounded(client.lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: lease,
                keys: false,
            }))
            .await?;
        Ok((response.ttl > 0).then_some(response.ttl))
    }

    /// Opens a keep-alive stream renewing `lease`, and renews it once (etcd
    /// answers a stream's headers with its first message, so the stream
    /// opens with a request); the TTL the lease has again, `None` if it is
    /// gone.
    pub async fn keep_alive(&self, lease: i64) -> Result<(KeepAlive, Option<i64>), EtcdError> {
        let (requests, outgoing) = flume::bounded::<pb::LeaseKeepAliveRequest>(4);
        let _ = requests.try_send(pb::LeaseKeepAliveRequest { id: lease });
        let mut client = LeaseClient::new(self.channel());
        let responses = self
            .bounded(client.lease_keep_alive(leader_required(outgoing.into_stream())))
            .await?;
        let mut stream = KeepAlive {
            requests,
            responses,
            url: self.url().to_string(),
        };
        match tokio::time::timeout(self.request_timeout, stream.next()).await {
            Ok(Ok(ttl)) => Ok((stream, ttl)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(EtcdError::new(
                self.url(),
                EtcdErrorKind::Unavailable,
                "no keep-alive answer in time",
            )),
        }
    }

    /// Renews `lease` once, on a stream of its own; the TTL it has again, or
    /// `None` when it is gone.
    pub async fn keep_alive_once(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        Ok(self.keep_alive(lease).await?.1)
    }

    /// Watches every key starting with `prefix` from `start_revision`
    /// (inclusive); waits until etcd has created the watch. A compacted start
    /// revision is [`EtcdErrorKind::Compacted`].
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let (requests, outgoing) = flume::bounded::<pb::WatchRequest>(2);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: super::keys::prefix_end(prefix.as_bytes()),
                    start_revision,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        let _ = requests.send(create);
        let mut client = WatchClient::new(self.channel());
        let mut responses = self
            .bounded(client.watch(leader_required(outgoing.into_stream())))
            .await?;
        let first = tokio::time::timeout(self.request_timeout, responses.message()).await;
        let mut watch = Watch {
            _requests: requests,
            responses,
            url: self.url().to_string(),
            pending: None,
        };
        match first {
            Err(_) => Err(EtcdError::new(
                self.url(),
                EtcdErrorKind::Unavailable,
                "the watch was not created in time",
            )),
            Ok(Err(status)) => Err(self.error(status)),
            Ok(Ok(None)) => Err(EtcdError::new(
                self.url(),
                EtcdErrorKind::Unavailable,
                "the watch stream ended at once",
            )),
            Ok(Ok(Some(response))) => {
                watch.check(&response)?;
                // etcd may send events with the creation's answer.
                if !response.events.is_empty() {
                    watch.pending = Some(response);
                }
                Ok(watch)
            }
        }
    }

    /// The etcd cluster's members: (name, client URLs).
    pub async fn members(&self) -> Result<Vec<(String, Vec<String>)>, EtcdError> {
        let mut client = ClusterClient::new(self.channel());
        let response = self
            .bounded(client.member_list(pb::MemberListRequest {
                linearizable: false,
            }))
            .await?;
        Ok(response
            .members
            .into_iter()
            .map(|member| (member.name, member.client_ur_ls))
            .collect())
    }
}

/// A request stream with `hasleader=true`: a member without a leader refuses
/// it rather than keeping it open and silent.
fn leader_required<S>(stream: S) -> tonic::Request<S> {
    let mut request = tonic::Request::new(stream);
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

/// Who holds a key [`Etcd::put_if_free`] could not take.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is ours now (it was free, or already under our lease).
    Ours {
        /// The revision of the put.
        revision: i64,
    },
    /// Someone else's lease (or no lease) holds it.
    Held {
        /// The key as it is.
        holder: KeyValue,
    },
}

/// A lease keep-alive stream.
pub struct KeepAlive {
    /// Keep-alive requests to send.
    requests: flume::Sender<pb::LeaseKeepAliveRequest>,
    /// etcd's answers, one per request.
    responses: tonic::Streaming<pb::LeaseKeepAliveResponse>,
    /// The member it is open on, for errors.
    url: String,
}

impl KeepAlive {
    /// Asks for `lease` to be renewed; the answer comes through [`KeepAlive::next`].
    pub fn send(&self, lease: i64) -> Result<(), EtcdError> {
        self.requests
            .try_send(pb::LeaseKeepAliveRequest { id: lease })
            .map_err(|_| {
                EtcdError::new(
                    &self.url,
                    EtcdErrorKind::Unavailable,
                    "the keep-alive stream is not taking requests",
                )
            })
    }

    /// The next answer: the renewed lease's TTL, or `None` if it is gone.
    pub async fn next(&mut self) -> Result<Option<i64>, EtcdError> {
        match self.responses.message().await {
            Ok(Some(response)) => Ok((response.ttl > 0).then_some(response.ttl)),
            Ok(None) => Err(EtcdError::new(
                &self.url,
                EtcdErrorKind::Unavailable,
                "the keep-alive stream ended",
            )),
            Err(status) => Err(EtcdError::from_status(&self.url, status)),
        }
    }
}

/// An open watch on a prefix.
pub struct Watch {
    /// Kept so the request stream stays open (dropping it ends the watch).
    _requests: flume::Sender<pb::WatchRequest>,
    /// etcd's answers.
    responses: tonic::Streaming<pb::WatchResponse>,
    /// The member it is open on, for errors.
    url: String,
    /// Events that came with the creation's answer, handed out first.
    pending: Option<pb::WatchResponse>,
}

/// One batch of a watch: its events and the revision it brings the watcher to.
#[derive(Debug, Default)]
pub struct WatchBatch {
    /// The changes, in revision order (none for a progress notification).
    pub events: Vec<Event>,
    /// The store's revision as of this batch.
    pub revision: i64,
}

impl Watch {
    fn check(&self, response: &pb::WatchResponse) -> Result<(), EtcdError> {
        if response.compact_revision > 0 {
            return Err(EtcdError::new(
                &self.url,
                EtcdErrorKind::Compacted,
                format!(
                    "the watch's revision was compacted (oldest kept: {})",
                    response.compact_revision
                ),
            ));
        }
        if response.canceled {
            return Err(EtcdError::new(
                &self.url,
                EtcdErrorKind::Unavailable,
                format!("etcd cancelled the watch: {}", response.cancel_reason),
            ));
        }
        Ok(())
    }

    /// The next batch of events (or progress notification).
    pub async fn next(&mut self) -> Result<WatchBatch, EtcdError> {
        let response = match self.pending.take() {
            Some(response) => response,
            None => match self.responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return Err(EtcdError::new(
                        &self.url,
                        EtcdErrorKind::Unavailable,
                        "the watch stream ended",
                    ))
                }
                Err(status) => return Err(EtcdError::from_status(&self.url, status)),
            },
        };
        self.check(&response)?;
        Ok(WatchBatch {
            revision: response.header.map_or(0, |h| h.revision),
            events: response.events,
        })
    }
}
