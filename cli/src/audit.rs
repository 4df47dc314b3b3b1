//! `outpost audit list`: the hub's audit log, newest first.

use std::io::Write;
use std::time::Duration;

use outpost_proto::v1::ListAuditRequest;
use outpost_proto::v1::audit_service_client::AuditServiceClient;
use outpost_trust::grpc_channel::with_bearer;
use serde_json::Value;

use crate::{GlobalArgs, print_table, status_error};

/// Lists entries from `since` ago (all when `None`), at most `limit`.
pub(crate) async fn list(
    global: &GlobalArgs,
    since: Option<Duration>,
    limit: u32,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let since_ms = match since {
        Some(ago) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            i64::try_from(now.saturating_sub(ago).as_millis()).unwrap_or(i64::MAX)
        }
        None => 0,
    };
    let (channel, jwt) = crate::work::channel(global).await?;
    let entries = AuditServiceClient::new(channel)
        .list_audit(with_bearer(ListAuditRequest { since_ms, limit }, &jwt))
        .await
        .map_err(status_error)?
        .into_inner()
        .entries;
    if global.json {
        let list: Vec<Value> = entries
            .iter()
            .map(outpost_hub::api::views::audit_json)
            .collect();
        writeln!(out, "{}", Value::Array(list))?;
        return Ok(());
    }
    let mut rows = vec![
        [
            "AT", "WHO", "ROLE", "SURFACE", "ACTION", "TARGET", "OUTCOME",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &entries {
        rows.push(vec![
            outpost_hub::api::views::time_json(e.at_ms)
                .as_str()
                .unwrap_or("-")
                .to_string(),
            e.subject.clone(),
            e.role.clone(),
            e.surface.clone(),
            e.action.clone(),
            e.target.clone(),
            format!("{} ({})", e.outcome, e.status),
        ]);
    }
    print_table(&rows, out)
}
