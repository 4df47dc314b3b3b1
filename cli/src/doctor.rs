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
    let channel = match ctx.channel().await {
        Ok(channel) => channel,
        Err(e) => return report.fail("grpc", format!("{e:#}")),
    };
    match tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
    {
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
}
