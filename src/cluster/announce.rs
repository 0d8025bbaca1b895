//! `percore announce`: registers a compute node that cannot register itself
//! (an MLServer, a Triton) under `/percore/<cluster>/nodes/<class>/<id>`, and
//! keeps the registration only while the node is ready.
//!
//! Every `interval` the node's readiness is checked ([`super::readiness`]). While
//! it passes, the registration's lease is renewed; when it fails, the lease is
//! revoked at once, so the dispatchers drop the node at the next watch event
//! (and should the revoke not reach etcd, the lease expires within its TTL).
//! When the check passes again, a new lease and registration follow. At the
//! stop (SIGINT, SIGTERM) the lease is revoked. An etcd that goes away is
//! waited for, the next endpoint tried each time; the lease it kept, or a new
//! one, carries on when it answers.

use std::time::{Duration, Instant};

use super::etcd::{Etcd, EtcdErrorKind};
use super::readiness::{Check, Node};
use super::{keys, ClusterError, START_TIMEOUT};
use crate::console;

/// What to announce, and how.
#[derive(Debug, Clone)]
pub struct AnnounceSpec {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// The cluster's name.
    pub cluster: String,
    /// The class the node serves.
    pub class: String,
    /// The node's id (its key's last segment).
    pub id: String,
    /// Where the node serves KServe v2 gRPC, `host:port`.
    pub addr: String,
    /// The model it serves, if it should be checked and said.
    pub model: Option<String>,
    /// Its weight among the class's nodes.
    pub weight: u32,
    /// The readiness check.
    pub check: Check,
    /// The lease's TTL.
    pub ttl: Duration,
    /// Time between two checks (and lease renewals).
    pub interval: Duration,
}

impl AnnounceSpec {
    /// Checks the flags together; the error names the flag.
    pub fn validate(&self) -> Result<(), ClusterError> {
        keys::check_segment("--cluster", &self.cluster).map_err(ClusterError)?;
        keys::check_segment("--class", &self.class).map_err(ClusterError)?;
        keys::check_segment("--id", &self.id).map_err(ClusterError)?;
        super::nodes::parse(&self.id, &self.value(), self.model.as_deref().unwrap_or(""))
            .map_err(|why| ClusterError(format!("--addr/--weight: {why}")))?;
        if self.ttl < Duration::from_secs(2) {
            return Err(ClusterError(
                "--ttl must be at least 2 s (etcd's shortest lease)".into(),
            ));
        }
        if self.interval.is_zero() || self.interval * 3 > self.ttl {
            return Err(ClusterError(format!(
                "--interval {} ms must be at most a third of --ttl ({} s), so a ready node's lease never lapses",
                self.interval.as_millis(),
                self.ttl.as_secs()
            )));
        }
        Ok(())
    }

    /// The registration's key.
    pub fn key(&self) -> String {
        keys::node_key(&self.cluster, &self.class, &self.id)
    }

    /// The registration's value.
    pub fn value(&self) -> Vec<u8> {
        let mut value = serde_json::json!({
            "addr": self.addr,
            "weight": self.weight,
            "health": self.check.name(),
            "announced_by": format!("percore announce on {}", super::membership::host_name()),
        });
        if let Some(model) = &self.model {
            value["model"] = serde_json::json!(model);
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// Announces until `stop` says so (or its sender goes); revokes the lease then.
pub fn run(spec: AnnounceSpec, stop: flume::Receiver<()>) -> Result<(), ClusterError> {
    spec.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClusterError(format!("cannot start a tokio runtime: {error}")))?;
    runtime.block_on(announce(spec, stop))
}

/// Tries etcd until it answers (a read of the key), bounded by [`START_TIMEOUT`].
pub async fn reach(etcd: &mut Etcd, key: &str) -> Result<(), ClusterError> {
    let began = Instant::now();
    let mut backoff =
        super::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut attempts = 0;
    let mut last = Vec::new();
    loop {
        attempts += 1;
        match etcd.range(key.as_bytes(), &[]).await {
            Ok(_) => return Ok(()),
            Err(error) if error.kind == EtcdErrorKind::Refused => {
                return Err(ClusterError(error.to_string()))
            }
            Err(error) => {
                last.retain(|(url, _): &(String, String)| *url != error.url);
                last.push((error.url.clone(), error.detail.clone()));
            }
        }
        let delay = backoff.next_delay();
        if began.elapsed() + delay > START_TIMEOUT {
            let tried: Vec<String> = last
                .iter()
                .map(|(url, why)| format!("{url} ({why})"))
                .collect();
            return Err(ClusterError(format!(
                "etcd does not answer: {} — {attempts} attempts in {:.1} s (--etcd); is etcd running there?",
                tried.join(", "),
                began.elapsed().as_secs_f64()
            )));
        }
        etcd.rotate();
        tokio::time::sleep(delay).await;
    }
}

async fn announce(spec: AnnounceSpec, stop: flume::Receiver<()>) -> Result<(), ClusterError> {
    let request_timeout = (spec.ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(3));
    let mut etcd = Etcd::new(&spec.endpoints, request_timeout)
        .map_err(|error| ClusterError(format!("--etcd: {error}")))?;
    let key = spec.key();
    let value = spec.value();
    reach(&mut etcd, &key).await?;
    let node = Node::new(
        &spec.addr,
        spec.check.clone(),
        spec.interval.min(Duration::from_secs(2)),
    )
    .map_err(ClusterError)?;
    console::err(format_args!(
        "announce: {key} for {} ({} check every {} ms, lease TTL {} s)",
        spec.addr,
        spec.check.name(),
        spec.interval.as_millis(),
        spec.ttl.as_secs()
    ));
    let mut lease: Option<i64> = None;
    // The last thing said about readiness and about etcd, to log changes only.
    let mut said_ready: Option<Result<(), String>> = None;
    let mut etcd_failing = false;
    let mut ticks = tokio::time::interval(spec.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.recv_async() => break,
        }
        let ready = node.check().await;
        if said_ready.as_ref() != Some(&ready) {
            match &ready {
                Ok(()) => console::err(format_args!("announce: {} is ready", spec.addr)),
                Err(why) => {
                    console::err(format_args!("announce: {} is not ready: {why}", spec.addr))
                }
            }
            said_ready = Some(ready.clone());
        }
        let step = match (&ready, lease) {
            (Ok(()), None) => match etcd.grant(spec.ttl.as_secs() as i64).await {
                Ok((granted, _)) => match etcd.put(&key, &value, granted).await {
                    Ok(_) => {
                        lease = Some(granted);
                        console::err(format_args!(
                            "announce: registered {key} (lease {granted:x})"
                        ));
                        Ok(())
                    }
                    Err(error) => {
                        let _ = etcd.revoke(granted).await;
                        Err(error)
                    }
                },
                Err(error) => Err(error),
            },
            (Ok(()), Some(held)) => match etcd.keep_alive_once(held).await {
                Ok(Some(_)) => Ok(()),
                // Expired (etcd was away longer than the TTL): register anew next tick.
                Ok(None) => {
                    console::err(format_args!(
                        "announce: the lease of {key} expired; registering again"
                    ));
                    lease = None;
                    ticks.reset_immediately();
                    Ok(())
                }
                Err(error) if error.kind == EtcdErrorKind::LeaseNotFound => {
                    lease = None;
                    ticks.reset_immediately();
                    Ok(())
                }
                Err(error) => Err(error),
            },
            (Err(_), Some(held)) => {
                // Gone now whatever etcd says: the lease expires if the revoke is lost.
                lease = None;
                match etcd.revoke(held).await {
                    Ok(()) => {
                        console::err(format_args!(
                            "announce: lease revoked, {key} removed until {} is ready again",
                            spec.addr
                        ));
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
            (Err(_), None) => Ok(()),
        };
        match step {
            Ok(()) if etcd_failing => {
                etcd_failing = false;
                console::err(format_args!(
                    "announce: etcd answers again at {}",
                    etcd.url()
                ));
            }
            Ok(()) => {}
            Err(error) => {
                if !etcd_failing {
                    console::err(format_args!("announce: {error}; retrying"));
                }
                etcd_failing = true;
                etcd.rotate();
            }
        }
    }
    if let Some(held) = lease {
        match etcd.revoke(held).await {
            Ok(()) => console::err(format_args!("announce: stopped; lease revoked, {key} removed")),
            Err(error) => console::err(format_args!(
                "announce: stopped; could not revoke the lease ({error}): {key} expires within {} s",
                spec.ttl.as_secs()
            )),
        }
    }
    Ok(())
}
