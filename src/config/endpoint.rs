//! Where a class's calls go and how: its `data_sources`, its `compute_nodes`
//! or its `gateway`, the `authority` of its compute-node calls, and the TLS
//! tables `[classes.tls]` (compute nodes or gateway) and `[classes.source_tls]`
//! (data sources).
//!
//! ```toml
//! compute_nodes = ["https://infer-1.internal:8443", "infer-2.internal:8443"]
//! # or: gateway = "https://gw.internal:443"
//! # or: gateway = { endpoint = "gw.internal:443", class_header = "x-route", model_header = "" }
//! authority = "models.internal"     # :authority of every compute-node call
//! [classes.tls]                     # makes bare host:port endpoints TLS
//! ca_file = "tls/ca.pem"            # paths relative to this file
//! client_cert = "tls/client.pem"
//! client_key = "tls/client.key"
//! server_name = "infer.internal"
//! ```
//!
//! An endpoint is TLS when written `https://`, or written `host:port` in a
//! role that has a TLS table; `http://` is always plaintext. A TLS table whose
//! role has no TLS endpoint is refused (its settings would never be used).
//! Names are looked up once here, so one that does not resolve stops the
//! start with its line, and again at every connect (see
//! [`crate::endpoint::resolve`]).

use std::net::ToSocketAddrs;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::metadata::{self, Metadata};
use crate::diagnostic::{ConfigError, Source};
use crate::endpoint::tls::{ClientTlsSpec, TlsError};
use crate::endpoint::{ClientTls, Endpoint, Host};

/// The header that carries the class's name through a gateway, by default.
pub const DEFAULT_CLASS_HEADER: &str = "x-percore-class";
/// The header that carries the model's name through a gateway, by default.
pub const DEFAULT_MODEL_HEADER: &str = "x-percore-model";

/// A class that calls a routing gateway instead of its replicas: the routing
/// keys its calls carry besides the gRPC path and the request's `model_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Header whose value is the class's name (`x-percore-class` by
    /// default); `None` sends none.
    pub class_header: Option<String>,
    /// Header whose value is the model's name (`x-percore-model` by default),
    /// for gateways that route by model but cannot read the protobuf body;
    /// `None` sends none.
    pub model_header: Option<String>,
}

impl Gateway {
    /// The routing headers of `class` serving `model`, as `(name, value)`.
    pub fn headers<'a>(&'a self, class: &'a str, model: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut headers = Vec::new();
        if let Some(name) = &self.class_header {
            headers.push((name.as_str(), class));
        }
        if let Some(name) = &self.model_header {
            headers.push((name.as_str(), model));
        }
        headers
    }
}

/// A TLS table (`[classes.tls]`, `[classes.source_tls]`) as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    /// PEM CAs to trust, relative to the config; absent: the system's.
    ca_file: Option<Spanned<String>>,
    /// PEM chain presented for mTLS, relative to the config.
    client_cert: Option<Spanned<String>>,
    /// PEM key of `client_cert`, relative to the config.
    client_key: Option<Spanned<String>>,
    /// The name certificates must carry instead of each endpoint's host.
    server_name: Option<Spanned<String>>,
}

/// `gateway` as written: an endpoint, or a table with its headers.
#[derive(Debug)]
pub(super) enum GatewayFile {
    /// `gateway = "host:port"`.
    Endpoint(String),
    /// `gateway = { endpoint = "…", class_header = "…", model_header = "…" }`.
    Table(GatewayTable),
}

/// `gateway` as a table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GatewayTable {
    /// The gateway, as an endpoint (`host:port`, `https://…`).
    endpoint: String,
    /// The class header's name; `""` sends none; absent: the default.
    class_header: Option<String>,
    /// The model header's name; `""` sends none; absent: the default.
    model_header: Option<String>,
}

impl<'de> Deserialize<'de> for GatewayFile {
    /// A string or a table, each with serde's own errors (an untagged enum
    /// would only say that neither matched).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = GatewayFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or a table { endpoint, class_header, model_header }")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<GatewayFile, E> {
                Ok(GatewayFile::Endpoint(text.to_string()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<GatewayFile, M::Error> {
                GatewayTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(GatewayFile::Table)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The keys of one `[[classes]]` table this module reads.
pub(super) struct EndpointKeys<'a> {
    /// `name`, whose span stands for the class when a key is missing.
    pub name: &'a Spanned<String>,
    /// The class's model, a gateway's routing key.
    pub model: &'a str,
    /// `data_sources`: required.
    pub data_sources: &'a Spanned<Vec<Spanned<String>>>,
    /// `compute_nodes`: this or `gateway`.
    pub compute_nodes: Option<&'a Spanned<Vec<Spanned<String>>>>,
    /// `compute_nodes = "etcd"`: neither a list nor a gateway; the nodes come
    /// from etcd at run time (none here).
    pub discovered: bool,
    /// `gateway`: this or `compute_nodes`.
    pub gateway: Option<&'a Spanned<GatewayFile>>,
    /// `authority`: the compute-node calls' `:authority`.
    pub authority: Option<&'a Spanned<String>>,
    /// `[classes.tls]`: the compute nodes' (or gateway's) TLS.
    pub tls: Option<&'a Spanned<TlsFile>>,
    /// `[classes.source_tls]`: the data sources' TLS.
    pub source_tls: Option<&'a Spanned<TlsFile>>,
}

/// A class's endpoints, checked.
pub(super) struct Endpoints {
    /// Its data sources.
    pub data_sources: Vec<Endpoint>,
    /// Its compute nodes (the gateway alone, in gateway mode), each with its
    /// text as written, which `[classes.upstream] weights` may name.
    pub compute_nodes: Vec<(String, Endpoint)>,
    /// The routing keys, in gateway mode.
    pub gateway: Option<Gateway>,
}

/// Checks a class's endpoint keys (`prefix` is `classes[N]`); `metadata` is
/// the class's, whose header names the gateway's must not repeat.
pub(super) fn validate(
    keys: &EndpointKeys<'_>,
    metadata: &Metadata,
    prefix: &str,
    source: &Source,
) -> Result<Endpoints, ConfigError> {
    let field = |name: &str| format!("{prefix}.{name}");
    let base = source.file.parent().unwrap_or_else(|| Path::new(""));
    let source_tls = match keys.source_tls {
        None => None,
        Some(table) => Some(load_tls(table, &field("source_tls"), base, source)?),
    };
    let compute_tls = match keys.tls {
        None => None,
        Some(table) => Some(load_tls(table, &field("tls"), base, source)?),
    };
    // The system's CAs, read once for every https endpoint without a table.
    let mut system: Option<ClientTls> = None;
    let data_sources = endpoint_list(
        keys.data_sources,
        &field("data_sources"),
        source_tls.as_ref(),
        &mut system,
        source,
    )?;
    if let (Some(table), false) = (keys.source_tls, data_sources.iter().any(is_tls)) {
        return Err(unused_table(
            table,
            &field("source_tls"),
            "data source",
            source,
        ));
    }
    let (written, gateway) = match (keys.compute_nodes, keys.gateway) {
        (Some(_), Some(gateway)) => {
            return Err(source.error(
                gateway.span(),
                field("gateway"),
                "a class has compute_nodes or a gateway, not both: it calls its replicas \
                 directly, or one gateway that balances over them",
            ))
        }
        (None, None) if keys.discovered => (Vec::new(), None),
        (None, None) => {
            return Err(source.error(
                keys.name.span(),
                field("compute_nodes"),
                "missing: list the class's compute_nodes, or name the gateway in front of them",
            ))
        }
        (Some(nodes), None) => (
            endpoint_list_written(
                nodes,
                &field("compute_nodes"),
                compute_tls.as_ref(),
                &mut system,
                source,
            )?,
            None,
        ),
        (None, Some(gateway)) => {
            let (text, table) = match gateway.get_ref() {
                GatewayFile::Endpoint(text) => (text.as_str(), None),
                GatewayFile::Table(table) => (table.endpoint.as_str(), Some(table)),
            };
            let endpoint = one_endpoint(
                text,
                gateway.span(),
                &field("gateway"),
                compute_tls.as_ref(),
                &mut system,
                source,
            )?;
            let header = |name: &str, chosen: Option<&String>, default: &str| {
                let key = field(&format!("gateway.{name}"));
                let text = chosen.map_or(default, String::as_str);
                routing_header(text, metadata, &key, gateway.span(), source)
            };
            let routing = Gateway {
                class_header: header(
                    "class_header",
                    table.and_then(|t| t.class_header.as_ref()),
                    DEFAULT_CLASS_HEADER,
                )?,
                model_header: header(
                    "model_header",
                    table.and_then(|t| t.model_header.as_ref()),
                    DEFAULT_MODEL_HEADER,
                )?,
            };
            for (header, value, what) in [
                (
                    &routing.class_header,
                    keys.name.get_ref().as_str(),
                    "class name",
                ),
                (&routing.model_header, keys.model, "model name"),
            ] {
                if header.is_some() && http::HeaderValue::from_str(value).is_err() {
                    return Err(source.error(
                        gateway.span(),
                        field("gateway"),
                        format!(
                            "the {what} {value:?} cannot be a header value (control characters \
                             or non-ASCII): route by the other header, or set this one to \"\""
                        ),
                    ));
                }
            }
            if routing.class_header.is_some() && routing.class_header == routing.model_header {
                return Err(source.error(
                    gateway.span(),
                    field("gateway.model_header"),
                    "is the class_header too: name two headers",
                ));
            }
            (vec![(text.to_string(), endpoint)], Some(routing))
        }
    };
    if let (Some(table), false) = (keys.tls, written.iter().any(|(_, e)| is_tls(e))) {
        return Err(unused_table(
            table,
            &field("tls"),
            "compute node or gateway",
            source,
        ));
    }
    let compute_nodes = match keys.authority {
        None => written,
        Some(authority) => {
            let text = authority.get_ref();
            if text.parse::<http::uri::Authority>().is_err() || text.is_empty() {
                return Err(source.error(
                    authority.span(),
                    field("authority"),
                    format!("{text:?} is not a valid :authority (host or host:port)"),
                ));
            }
            written
                .into_iter()
                .map(|(text_as_written, endpoint)| (text_as_written, endpoint.with_authority(text)))
                .collect()
        }
    };
    Ok(Endpoints {
        data_sources,
        compute_nodes,
        gateway,
    })
}

fn is_tls(endpoint: &Endpoint) -> bool {
    endpoint.tls().is_some()
}

fn unused_table(table: &Spanned<TlsFile>, field: &str, role: &str, source: &Source) -> ConfigError {
    source.error(
        table.span(),
        field,
        format!(
            "no {role} of the class speaks TLS (each is written http://), so this table \
             would never be used: write them as host:port or https://host:port"
        ),
    )
}

/// A routing header's name: lowercase, valid, not one percore or gRPC sets,
/// not one of the class's metadata; `""` sends none.
fn routing_header(
    name: &str,
    metadata: &Metadata,
    field: &str,
    span: std::ops::Range<usize>,
    source: &Source,
) -> Result<Option<String>, ConfigError> {
    if name.is_empty() {
        return Ok(None);
    }
    let lowercase = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(lowercase.as_bytes()).is_err() {
        return Err(source.error(span, field, format!("{name:?} is not a valid header name")));
    }
    if metadata::is_reserved(&lowercase) {
        return Err(source.error(
            span,
            field,
            format!("{name:?} is set by percore or reserved by gRPC; choose another header"),
        ));
    }
    if metadata.names().contains(&lowercase.as_str()) {
        return Err(source.error(
            span,
            field,
            format!("{name:?} is also in [classes.metadata]: the gateway sets it to the class's routing key"),
        ));
    }
    Ok(Some(lowercase))
}

/// Reads a TLS table: its files relative to the config's folder.
fn load_tls(
    table: &Spanned<TlsFile>,
    prefix: &str,
    base: &Path,
    source: &Source,
) -> Result<ClientTls, ConfigError> {
    let file = table.get_ref();
    let path = |key: &Option<Spanned<String>>| key.as_ref().map(|p| base.join(p.get_ref()));
    let spec = ClientTlsSpec {
        ca_file: path(&file.ca_file),
        client_cert: path(&file.client_cert),
        client_key: path(&file.client_key),
        server_name: file.server_name.as_ref().map(|name| name.get_ref().clone()),
    };
    ClientTls::load(&spec).map_err(|TlsError { key, message }| {
        let span = match key {
            "ca_file" => file.ca_file.as_ref(),
            "client_cert" => file.client_cert.as_ref(),
            "client_key" => file.client_key.as_ref(),
            _ => file.server_name.as_ref(),
        }
        .map_or(table.span(), Spanned::span);
        source.error(span, format!("{prefix}.{key}"), message)
    })
}

/// A list of endpoints, each checked ([`one_endpoint`]), at least one, none twice.
fn endpoint_list(
    nodes: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    tls: Option<&ClientTls>,
    system: &mut Option<ClientTls>,
    source: &Source,
) -> Result<Vec<Endpoint>, ConfigError> {
    Ok(endpoint_list_written(nodes, field, tls, system, source)?
        .into_iter()
        .map(|(_, endpoint)| endpoint)
        .collect())
}

/// [`endpoint_list`], each endpoint with its text as written.
fn endpoint_list_written(
    nodes: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    tls: Option<&ClientTls>,
    system: &mut Option<ClientTls>,
    source: &Source,
) -> Result<Vec<(String, Endpoint)>, ConfigError> {
    if nodes.get_ref().is_empty() {
        return Err(source.error(nodes.span(), field, "must list at least one address"));
    }
    let mut endpoints: Vec<(String, Endpoint)> = Vec::with_capacity(nodes.get_ref().len());
    for (index, node) in nodes.get_ref().iter().enumerate() {
        let text = node.get_ref().as_str();
        let item = format!("{field}[{index}]");
        let endpoint = one_endpoint(text, node.span(), &item, tls, system, source)?;
        let twice = endpoints
            .iter()
            .any(|(_, known)| known.name().eq_ignore_ascii_case(endpoint.name()));
        if twice {
            return Err(source.error(node.span(), item, format!("{text:?} is listed twice")));
        }
        endpoints.push((text.to_string(), endpoint));
    }
    Ok(endpoints)
}

/// One endpoint: parsed, its name resolved once (so a typo stops the start),
/// and given its TLS settings when it speaks TLS: the role's table, else the
/// system's CAs (read once, into `system`).
fn one_endpoint(
    text: &str,
    span: std::ops::Range<usize>,
    field: &str,
    tls: Option<&ClientTls>,
    system: &mut Option<ClientTls>,
    source: &Source,
) -> Result<Endpoint, ConfigError> {
    let error = |message: String| source.error(span.clone(), field, message);
    let endpoint = Endpoint::parse(text).map_err(error)?;
    if let Host::Name(name) = endpoint.host() {
        let resolved = (name.as_ref(), endpoint.port())
            .to_socket_addrs()
            .map_err(|cause| error(format!("cannot resolve {text:?}: {cause}")))?;
        if resolved.count() == 0 {
            return Err(error(format!("{text:?} resolves to no address")));
        }
    }
    let wants_tls = match (endpoint.scheme(), Endpoint::names_scheme(text)) {
        (crate::endpoint::Scheme::Https, _) => true,
        (crate::endpoint::Scheme::Http, true) => false,
        (crate::endpoint::Scheme::Http, false) => tls.is_some(),
    };
    if !wants_tls {
        return Ok(endpoint);
    }
    let settings = match tls {
        Some(tls) => tls.clone(),
        None => match system {
            Some(loaded) => loaded.clone(),
            None => {
                let loaded = ClientTls::load(&ClientTlsSpec::default())
                    .map_err(|TlsError { message, .. }| error(message))?;
                *system = Some(loaded.clone());
                loaded
            }
        },
    };
    endpoint.with_tls(settings).map_err(error)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};
    use crate::endpoint::Scheme;

    /// A config of one class whose endpoint keys are `keys` (lines of the
    /// class, then its tables).
    fn with(keys: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"
[devices]
generate = {{ count = 2, mix = {{ camera = 1 }} }}

[sink]
kind = "sqlite"
path = "out/percore.db"

[[classes]]
name = "camera"
model = "resnet50"
period_ms = 1000
deadline_ms = 1000
data_sources = ["127.0.0.1:9000"]
{keys}
"#
        );
        Config::from_str(&text, Path::new("conf/fleet.toml"))
    }

    fn error_of(keys: &str) -> String {
        match with(keys) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn host_names_are_kept_as_written_and_checked_at_load() {
        let config = with("compute_nodes = [\"localhost:9001\", \"http://127.0.0.1:9002\"]")
            .expect("a valid config");
        let names: Vec<String> = config.classes[0]
            .compute_nodes
            .iter()
            .map(|node| node.to_string())
            .collect();
        assert_eq!(names, ["localhost:9001", "127.0.0.1:9002"]);
        assert_eq!(config.classes[0].gateway, None);
        let error = error_of("compute_nodes = [\"no-such-host.invalid:9001\"]");
        assert!(
            error.starts_with(
                "conf/fleet.toml:15: classes[0].compute_nodes[0]: cannot resolve \
                 \"no-such-host.invalid:9001\""
            ),
            "{error}"
        );
        assert_eq!(
            error_of("compute_nodes = [\"localhost:9001\", \"LOCALHOST:9001\"]"),
            "conf/fleet.toml:15: classes[0].compute_nodes[1]: \"LOCALHOST:9001\" is listed twice"
        );
        assert_eq!(
            error_of("compute_nodes = [\"ftp://localhost:9001\"]"),
            "conf/fleet.toml:15: classes[0].compute_nodes[0]: unknown scheme \"ftp\" in \
             \"ftp://localhost:9001\" (expected http:// or https://)"
        );
    }

    #[test]
    fn a_gateway_replaces_the_compute_nodes_and_carries_routing_headers() {
        let config = with("gateway = \"localhost:8443\"").expect("a valid config");
        let class = &config.classes[0];
        assert_eq!(class.compute_nodes.len(), 1);
        assert_eq!(class.compute_nodes[0].to_string(), "localhost:8443");
        let gateway = class.gateway.as_ref().expect("gateway mode");
        assert_eq!(
            gateway.headers(&class.name, &class.model),
            [
                ("x-percore-class", "camera"),
                ("x-percore-model", "resnet50")
            ]
        );
        let config = with(
            "gateway = { endpoint = \"127.0.0.1:8443\", class_header = \"X-Route\", model_header = \"\" }",
        )
        .expect("a valid config");
        let class = &config.classes[0];
        let gateway = class.gateway.as_ref().expect("gateway mode");
        assert_eq!(
            gateway.headers(&class.name, &class.model),
            [("x-route", "camera")]
        );
    }

    #[test]
    fn gateway_mistakes_are_named_with_their_line() {
        assert_eq!(
            error_of("compute_nodes = [\"127.0.0.1:9001\"]\ngateway = \"127.0.0.1:8443\""),
            "conf/fleet.toml:16: classes[0].gateway: a class has compute_nodes or a gateway, \
             not both: it calls its replicas directly, or one gateway that balances over them"
        );
        assert_eq!(
            error_of(""),
            "conf/fleet.toml:10: classes[0].compute_nodes: missing: list the class's \
             compute_nodes, or name the gateway in front of them"
        );
        assert_eq!(
            error_of("gateway = { endpoint = \"127.0.0.1:8443\", class_header = \"grpc-route\" }"),
            "conf/fleet.toml:15: classes[0].gateway.class_header: \"grpc-route\" is set by \
             percore or reserved by gRPC; choose another header"
        );
        assert_eq!(
            error_of(
                "gateway = { endpoint = \"127.0.0.1:8443\", model_header = \"x-percore-class\" }"
            ),
            "conf/fleet.toml:15: classes[0].gateway.model_header: is the class_header too: \
             name two headers"
        );
        assert_eq!(
            error_of("gateway = \"127.0.0.1:8443\"\n[classes.metadata]\nx-percore-class = \"x\""),
            "conf/fleet.toml:15: classes[0].gateway.class_header: \"x-percore-class\" is also \
             in [classes.metadata]: the gateway sets it to the class's routing key"
        );
        let error = error_of("gateway = { endpoint = \"127.0.0.1:8443\", header = \"x\" }");
        assert!(
            error.starts_with("conf/fleet.toml:15: unknown field `header`, expected one of"),
            "{error}"
        );
    }

    #[test]
    fn tls_tables_make_bare_endpoints_tls_and_must_be_used() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let table = format!("[classes.tls]\nca_file = {:?}\n", ca.display().to_string());
        let config = with(&format!(
            "compute_nodes = [\"localhost:9001\", \"http://127.0.0.1:9002\"]\n\
             authority = \"models.internal\"\n{table}"
        ))
        .expect("a valid config");
        let nodes = &config.classes[0].compute_nodes;
        assert_eq!(
            nodes[0].scheme(),
            Scheme::Https,
            "bare host:port with a table"
        );
        assert_eq!(nodes[1].scheme(), Scheme::Http, "http:// stays plaintext");
        assert_eq!(nodes[0].authority(), "models.internal");
        assert!(config.classes[0].data_sources[0].tls().is_none());
        let error = error_of(&format!(
            "compute_nodes = [\"http://127.0.0.1:9001\"]\n{table}"
        ));
        assert!(
            error.starts_with(
                "conf/fleet.toml:16: classes[0].tls: no compute node or gateway of the class \
                 speaks TLS"
            ),
            "{error}"
        );
        let error = error_of(
            "compute_nodes = [\"127.0.0.1:9001\"]\n[classes.source_tls]\nca_file = \"nowhere.pem\"",
        );
        assert!(
            error.starts_with(
                "conf/fleet.toml:17: classes[0].source_tls.ca_file: cannot read conf/nowhere.pem"
            ),
            "{error}"
        );
        // A reload that reads other bytes changes the class (new pools, new
        // connections); the same bytes leave it as it was.
        let keys = format!("compute_nodes = [\"localhost:9001\"]\n{table}");
        let first = with(&keys).expect("a valid config");
        assert_eq!(with(&keys).expect("a valid config").classes, first.classes);
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        assert_ne!(with(&keys).expect("a valid config").classes, first.classes);
        assert_eq!(
            error_of("compute_nodes = [\"127.0.0.1:9001\"]\nauthority = \"a b\""),
            "conf/fleet.toml:16: classes[0].authority: \"a b\" is not a valid :authority \
             (host or host:port)"
        );
    }
}
