//! Resolving an endpoint's host when a connection is opened.
//!
//! An IP literal needs no lookup. A name is looked up with the system's
//! resolver (`getaddrinfo`: `/etc/hosts`, DNS, nsswitch) at every connect, so
//! a name that moves is followed at the next reconnect. `getaddrinfo` blocks,
//! so on a shard it runs on the executor's blocking thread
//! ([`runtime::spawn_blocking`]), never on the shard's own thread: the shard
//! goes on serving its other connections while a lookup waits, and the
//! connect's timeout bounds how long a call waits for it. A shard's lookups
//! run one after another on that thread, so a lookup the resolver holds for
//! its full timeout delays that shard's other lookups (not its calls on open
//! connections).

use std::net::{SocketAddr, ToSocketAddrs};

use super::Host;
use crate::runtime;

/// The addresses to try for `host:port`, in the resolver's order of
/// preference. Runs on an executor (a name is looked up off its thread).
pub async fn resolve(host: &Host, port: u16) -> Result<Vec<SocketAddr>, String> {
    match host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => {
            let name = name.to_string();
            runtime::spawn_blocking(move || lookup(&name, port)).await
        }
    }
}

/// Looks `name:port` up now, blocking the calling thread: at load, on the
/// coordinator, to refuse a name that does not resolve before anything runs.
pub fn lookup(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addresses: Vec<SocketAddr> = (name, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {name:?}: {error}"))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("{name:?} resolves to no address"));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves_and_a_bad_name_is_named() {
        let found = lookup("localhost", 9000).expect("localhost resolves");
        assert!(found.iter().all(|addr| addr.port() == 9000));
        assert!(found.iter().any(|addr| addr.ip().is_loopback()));
        let error = lookup("no-such-host.invalid", 1).unwrap_err();
        assert!(
            error.starts_with("cannot resolve \"no-such-host.invalid\""),
            "{error}"
        );
    }
}
