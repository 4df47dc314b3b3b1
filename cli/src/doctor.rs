//! `outpost doctor [--node ID]`: the troubleshooting steps as one command. Each check prints
//! `ok` or `FAIL` with the cause and, where there is one, the fix; the command fails (exit 1)
//! when any check does. Later checks that need an earlier one (TLS needs TCP) are skipped when
//! it failed, and say so.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use outpost_config::ServerRole;
use outpost_proto::v1::node_registry_client::NodeRegistryClient;
use outpost_proto::v1::{ListNodesRequest, NodeRef};
use outpost_trust::grpc_channel::{self, with_bearer};
use serde_json::json;

use crate::{ClientContext, GlobalArgs, load_config};

/// How long one network check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A hub certificate this close to its end is reported.
const EXPIRY_WARNING_DAYS: i64 = 14;

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn ok(&mut self, name: &'static str, detail: String) {
        self.checks.push(Check {
            name,
            ok: true,
            detail,
        });
    }

    fn fail(&mut self, name: &'static str, detail: String) {
        self.checks.push(Check {
            name,
            ok: false,
            detail,
        });
    }

    fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.ok).count()
    }
}

/// The fix for a refused token, from the hub's words.
fn token_fix(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("signature") {
        "the token was signed with another secret: the CLI's [internal_grpc.auth] shared_secret (or cert_dir/auth_secret.txt) must be the hub's"
    } else if lower.contains("issuer") {
        "[internal_grpc.auth] issuer differs from the hub's"
    } else if lower.contains("audience") {
        "[internal_grpc.auth] audience differs from the hub's"
    } else if lower.contains("expired") {
        "the token has expired: mint a new one (outpost token api) or check this machine's clock"
    } else {
        "check the token in OUTPOST_TOKEN, or the secret the CLI mints one with"
    }
}

/// The TLS handshake with the hub: the certificate's days left, or why it was refused.
async fn tls_check(host: &str, port: u16, ca_pem: &str) -> Result<i64, String> {
    let roots = outpost_trust::tls::roots_from_pem(ca_pem).map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(outpost_trust::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a valid server name: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("NotValidForName") || text.contains("not valid for name") {
                format!(
                    "{text}. Fix: connect by a name on the hub certificate, or add {host} to the hub's [internal_grpc.security] server_names (it reissues its certificate at the next start)"
                )
            } else if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
                format!("{text}. Fix: the CA file does not sign the hub's certificate: use the hub's cert_dir/ca.pem")
            } else {
                text
            }
        })?;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or("the hub sent no certificate")?;
    let not_after = outpost_trust::tls::not_after_unix(leaf).map_err(|e| e.to_string())?;
    let now = outpost_clock::Clock::now_ms(&outpost_clock::SystemClock) / 1000;
    Ok((not_after - now) / 86_400)
}

/// How far the hub's clock may be from this one before tokens and certificates misbehave.
const MAX_SKEW_S: i64 = 30;

/// The hub's clock against this machine's, from a response's `date` header: seconds the hub is
/// ahead (negative: behind), to the header's one-second resolution.
fn clock_skew_s(
    date: &str,
    sent: std::time::SystemTime,
    received: std::time::SystemTime,
) -> Option<i64> {
    let hub = httpdate::parse_http_date(date).ok()?;
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    // The hub stamped the answer between the request and the reply; its header drops the
    // fraction of its second, so compare against the midpoint shifted by half a second.
    let local = (unix(sent) + unix(received)) / 2.0 - 0.5;
    Some((unix(hub) - local).round() as i64)
}

/// Whether the hub's QUIC port answers over UDP: a handshake without a node certificate is
/// refused by the hub, and any answer at all shows the path is open.
async fn udp_check(host: &str, port: u16, ca_pem: &str) -> Result<String, String> {
    let roots = outpost_trust::tls::roots_from_pem(ca_pem).map_err(|e| e.to_string())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(outpost_trust::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![outpost_trust::tls::SESSION_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(CHECK_TIMEOUT).map_err(|e| e.to_string())?,
    ));
    client.transport_config(Arc::new(transport));
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let bind: std::net::SocketAddr = if addr.is_ipv6() {
        "[::]:0"
            .parse()
            .map_err(|e: std::net::AddrParseError| e.to_string())?
    } else {
        "0.0.0.0:0"
            .parse()
            .map_err(|e: std::net::AddrParseError| e.to_string())?
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(client, addr, host)
        .map_err(|e| e.to_string())?;
    let answer = match tokio::time::timeout(CHECK_TIMEOUT, connecting).await {
        Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => Err(format!(
            "no answer from {addr} over UDP within {CHECK_TIMEOUT:?}. Fix: open UDP {port} between here and the hub (nodes hold their sessions over QUIC), or check [server] quic_listen"
        )),
        Ok(Ok(connection)) => {
            connection.close(0u32.into(), b"doctor");
            Ok(format!("{addr} (UDP) answered a QUIC handshake"))
        }
        Ok(Err(e)) => Ok(format!("{addr} (UDP) answered a QUIC handshake ({e})")),
    };
    endpoint.close(0u32.into(), b"doctor");
    answer
}

/// `outpost doctor`
pub(crate) async fn doctor(
    global: &GlobalArgs,
    node: Option<String>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut report = Report::default();
    run_checks(global, node.as_deref(), &mut report).await;
    if global.json {
        let checks: Vec<_> = report
            .checks
            .iter()
            .map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail}))
            .collect();
        writeln!(
            out,
            "{}",
            json!({"ok": report.failed() == 0, "checks": checks})
        )?;
    } else {
        for check in &report.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            writeln!(
                out,
                "{mark} {}: {}",
                check.name,
                crate::terminal_safe(&check.detail)
            )?;
        }
    }
    let failed = report.failed();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} checks failed",
        report.checks.len()
    );
    Ok(())
}

async fn run_checks(global: &GlobalArgs, node: Option<&str>, report: &mut Report) {
    let config = match load_config(global, ServerRole::Hub) {
        Ok(config) => config,
        Err(e) => return report.fail("config", format!("{e:#}")),
    };
    let ctx = match ClientContext::discover(&config, global.hub.as_deref()) {
        Ok(ctx) => ctx,
        Err(e) => return report.fail("credentials", format!("{e:#}")),
    };
    report.ok("config", format!("hub {}", ctx.hub_url));
    let Some(host) = grpc_channel::url_host(&ctx.hub_url) else {
        return report.fail("hub address", format!("{} has no host", ctx.hub_url));
    };
    let port = ctx
        .hub_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or(50051);
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => report.ok("hub reachable", format!("{host}:{port} (TCP)")),
        Ok(Err(e)) => {
            return report.fail(
                "hub reachable",
                format!(
                    "{host}:{port}: {e}. Fix: is the hub running, and is [internal_grpc] listen on that address (a firewall in between)?"
                ),
            );
        }
        Err(_) => {
            return report.fail(
                "hub reachable",
                format!(
                    "{host}:{port}: no answer within {CHECK_TIMEOUT:?} (a firewall dropping it?)"
                ),
            );
        }
    }
    match tokio::time::timeout(CHECK_TIMEOUT, tls_check(&host, port, &ctx.ca_pem)).await {
        Ok(Ok(days)) if days < 0 => {
            return report.fail(
                "tls",
                "the hub certificate has expired: restart the hub to reissue it".into(),
            );
        }
        Ok(Ok(days)) if days < EXPIRY_WARNING_DAYS => report.fail(
            "tls",
            format!("the hub certificate ends in {days} days: restart the hub to reissue it"),
        ),
        Ok(Ok(days)) => report.ok(
            "tls",
            format!("hub certificate signed by the CA, names {host}, valid {days} more days"),
        ),
        Ok(Err(e)) => return report.fail("tls", e),
        Err(_) => return report.fail("tls", "the TLS handshake did not finish in time".into()),
    }
    // The QUIC port: the config's [server] quic_listen when it names one, else the gRPC port
    // number (the hub's default, UDP beside TCP).
    let quic_port = config
        .server
        .quic_listen
        .as_deref()
        .and_then(|listen| listen.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .unwrap_or(port);
    match udp_check(&host, quic_port, &ctx.ca_pem).await {
        Ok(detail) => report.ok("hub reachable (UDP)", detail),
        Err(detail) => report.fail("hub reachable (UDP)", detail),
    }
    let channel = match ctx.channel().await {
        Ok(channel) => channel,
        Err(e) => return report.fail("grpc", format!("{e:#}")),
    };
    let sent = std::time::SystemTime::now();
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    let received = std::time::SystemTime::now();
    if let Ok(answer) = &health {
        let skew = answer
            .metadata()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|date| clock_skew_s(date, sent, received));
        match skew {
            Some(s) if s.abs() <= MAX_SKEW_S => report.ok(
                "clock skew",
                format!("the hub's clock is within {}s of this one (±1 s)", s.abs()),
            ),
            Some(s) => report.fail(
                "clock skew",
                format!(
                    "the hub's clock is {}s {} this one: tokens may read as expired or not yet valid. Fix: run NTP (chrony, systemd-timesyncd) on both",
                    s.abs(),
                    if s > 0 { "ahead of" } else { "behind" }
                ),
            ),
            None => report.ok("clock skew", "the hub sent no date to compare".into()),
        }
    }
    match health {
        Ok(answer)
            if answer.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            report.ok("grpc health", "SERVING".into());
        }
        Ok(answer) => report.fail(
            "grpc health",
            format!("status {} (not SERVING)", answer.get_ref().status),
        ),
        Err(status) => report.fail("grpc health", status.message().to_string()),
    }
    let mut registry = NodeRegistryClient::new(channel);
    match registry
        .list_nodes(with_bearer(ListNodesRequest::default(), &ctx.jwt))
        .await
    {
        Ok(nodes) => report.ok(
            "token accepted",
            format!("{} nodes registered", nodes.get_ref().nodes.len()),
        ),
        Err(status) => {
            return report.fail(
                "token accepted",
                format!("{}. Fix: {}", status.message(), token_fix(status.message())),
            );
        }
    }
    let Some(node) = node else {
        return;
    };
    match registry
        .node_health(with_bearer(NodeRef { id: node.into() }, &ctx.jwt))
        .await
    {
        Ok(health) => {
            let health = health.into_inner();
            let how = format!(
                "status {}, heartbeats over {}, commands over the {} route, ping {} µs",
                health.status,
                if health.heartbeat_transport.is_empty() {
                    "nothing yet"
                } else {
                    &health.heartbeat_transport
                },
                if health.route.is_empty() {
                    "session"
                } else {
                    &health.route
                },
                health.ping_rtt_us
            );
            if health.reachable {
                report.ok("node session", format!("{node}: {how}"));
            } else {
                report.fail(
                    "node session",
                    format!(
                        "{node}: {how}: {}. Fix: is the node running, can it reach the hub's QUIC port (UDP), and is its token or identity valid (see its log)?",
                        health.error
                    ),
                );
            }
        }
        Err(status) => report.fail("node session", format!("{node}: {}", status.message())),
    }
    if let Ok(view) = registry
        .get_node(with_bearer(NodeRef { id: node.into() }, &ctx.jwt))
        .await
    {
        let record = view.into_inner().record.unwrap_or_default();
        report_server_name(report, node, &record.grpc_target, &record.tls_server_name);
    }
}

/// The registry's `tls_server_name` against the name on the node's certificate: the hub issues
/// each node a certificate whose only SAN is its id, and that is what its direct route serves.
fn report_server_name(report: &mut Report, node: &str, grpc_target: &str, server_name: &str) {
    if server_name.is_empty() || server_name == node {
        let route = if grpc_target.is_empty() {
            "no direct route".to_string()
        } else {
            format!("direct route {grpc_target}")
        };
        report.ok(
            "tls server name",
            format!("{route}; the node's certificate names {node}"),
        );
    } else {
        report.fail(
            "tls server name",
            format!(
                "the registry's tls_server_name {server_name:?} is not on the node's certificate, which names only {node:?}. Fix: outpost nodes update {node} --tls-server-name {node} (or leave it empty)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn skew_is_read_from_the_date_header_to_the_second() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_millis(s);
        // The hub stamped 1000 s; the call went out at 999.9 s and came back at 1000.3 s.
        let date = httpdate::fmt_http_date(at(1_000_000));
        assert_eq!(clock_skew_s(&date, at(999_900), at(1_000_300)), Some(0));
        assert_eq!(
            clock_skew_s(&date, at(940_000), at(940_200)),
            Some(60),
            "hub ahead"
        );
        assert_eq!(
            clock_skew_s(&date, at(1_100_000), at(1_100_100)),
            Some(-100),
            "hub behind"
        );
        assert_eq!(clock_skew_s("yesterday", at(0), at(0)), None);
    }

    #[test]
    fn a_server_name_the_node_certificate_lacks_is_reported_with_the_fix() {
        let mut report = Report::default();
        report_server_name(&mut report, "gpu-01", "", "");
        report_server_name(&mut report, "gpu-01", "https://10.0.0.5:50051", "gpu-01");
        report_server_name(
            &mut report,
            "gpu-01",
            "https://10.0.0.5:50051",
            "gpu01.internal",
        );
        assert_eq!(report.failed(), 1);
        let failed = &report.checks[2];
        assert!(!failed.ok);
        assert!(
            failed.detail.contains("--tls-server-name gpu-01"),
            "{}",
            failed.detail
        );
    }
}
