//! The fleet page's rows: which nodes a query selects (status, label and GPU model filters),
//! in which order, and which page of them — pure, over the registry's views, so 10,000 nodes
//! cost one sort and one page of HTML.

use std::cmp::Ordering;

use outpost_proto::v1::{GpuDevice, NodeView};

/// Rows on one page.
pub const PAGE_SIZE: usize = 50;

/// What the fleet page was asked for (its query string).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct FleetQuery {
    /// Only nodes with this status (online, offline, draining, fenced); empty: all.
    pub status: String,
    /// Only nodes with this label, `key=value` (or `key` for any value); empty: all.
    pub label: String,
    /// Only nodes with a GPU whose model contains this text (any case); empty: all.
    pub gpu: String,
    /// The order: `id` (default), `name`, `status`, `gpu_free` (most free GPU memory first) or
    /// `cpu` (busiest first).
    pub sort: String,
    /// The page, from 1.
    pub page: usize,
}

impl FleetQuery {
    /// The query string that asks for the same selection on page `page`.
    pub fn to_query(&self, page: usize) -> String {
        let mut parts = Vec::new();
        for (key, value) in [
            ("status", &self.status),
            ("label", &self.label),
            ("gpu", &self.gpu),
            ("sort", &self.sort),
        ] {
            if !value.is_empty() {
                parts.push(format!("{key}={}", encode(value)));
            }
        }
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        parts.join("&")
    }
}

/// Percent-encodes a query value or a path segment.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One page of the selection.
#[derive(Debug)]
pub struct FleetPage<'a> {
    /// Its rows, in order.
    pub rows: Vec<&'a NodeView>,
    /// Nodes the filters let through, on every page.
    pub matching: usize,
    /// Nodes in the fleet.
    pub total: usize,
    /// This page (from 1) and how many there are.
    pub page: usize,
    /// Pages of the selection (at least 1).
    pub pages: usize,
}

/// The devices of a node as last reported.
pub fn gpus(view: &NodeView) -> &[GpuDevice] {
    view.capabilities
        .as_ref()
        .and_then(|c| c.gpus.as_ref())
        .map_or(&[], |g| g.devices.as_slice())
}

fn label_matches(view: &NodeView, wanted: &str) -> bool {
    let Some(record) = view.record.as_ref() else {
        return false;
    };
    match wanted.split_once('=') {
        Some((key, value)) => record.labels.get(key).is_some_and(|v| v == value),
        None => record.labels.contains_key(wanted),
    }
}

fn selected(view: &NodeView, query: &FleetQuery) -> bool {
    (query.status.is_empty() || view.status == query.status)
        && (query.label.is_empty() || label_matches(view, &query.label))
        && (query.gpu.is_empty() || {
            let wanted = query.gpu.to_lowercase();
            gpus(view)
                .iter()
                .any(|g| g.name.to_lowercase().contains(&wanted))
        })
}

fn id(view: &NodeView) -> &str {
    view.record.as_ref().map_or("", |r| r.id.as_str())
}

fn most_free_gpu_mb(view: &NodeView) -> u64 {
    gpus(view)
        .iter()
        .map(|g| g.memory_free_mb)
        .max()
        .unwrap_or(0)
}

fn order(query: &FleetQuery, a: &NodeView, b: &NodeView) -> Ordering {
    let by = match query.sort.as_str() {
        "name" => {
            let name = |v: &NodeView| v.record.as_ref().map_or(String::new(), |r| r.name.clone());
            name(a).cmp(&name(b))
        }
        "status" => a.status.cmp(&b.status),
        "gpu_free" => most_free_gpu_mb(b).cmp(&most_free_gpu_mb(a)),
        "cpu" => {
            let cpu = |v: &NodeView| v.load.as_ref().map_or(0.0, |l| l.cpu_percent);
            cpu(b).total_cmp(&cpu(a))
        }
        _ => Ordering::Equal,
    };
    by.then_with(|| id(a).cmp(id(b)))
}

/// The page `query` asks for (a page past the last gives the last).
pub fn select<'a>(views: &'a [NodeView], query: &FleetQuery) -> FleetPage<'a> {
    let mut rows: Vec<&NodeView> = views.iter().filter(|v| selected(v, query)).collect();
    rows.sort_by(|a, b| order(query, a, b));
    let matching = rows.len();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let page = query.page.clamp(1, pages);
    let start = (page - 1) * PAGE_SIZE;
    let rows = rows.into_iter().skip(start).take(PAGE_SIZE).collect();
    FleetPage {
        rows,
        matching,
        total: views.len(),
        page,
        pages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::v1::{Capabilities, GpuSnapshot, Load, NodeRecord};

    fn node(id: &str, status: &str, gpu: Option<(&str, u64)>, cpu: f64) -> NodeView {
        NodeView {
            record: Some(NodeRecord {
                id: id.into(),
                name: format!("name-{id}"),
                labels: [("zone".to_string(), format!("z{}", id.len() % 2))].into(),
                ..NodeRecord::default()
            }),
            status: status.into(),
            load: Some(Load {
                cpu_percent: cpu,
                ..Load::default()
            }),
            capabilities: Some(Capabilities {
                gpus: Some(GpuSnapshot {
                    devices: gpu
                        .map(|(name, free)| GpuDevice {
                            name: name.into(),
                            memory_free_mb: free,
                            ..GpuDevice::default()
                        })
                        .into_iter()
                        .collect(),
                    ..GpuSnapshot::default()
                }),
                ..Capabilities::default()
            }),
            ..NodeView::default()
        }
    }

    fn ids(page: &FleetPage<'_>) -> Vec<String> {
        page.rows.iter().map(|v| id(v).to_string()).collect()
    }

    #[test]
    fn filters_by_status_label_and_gpu_model() {
        let views = vec![
            node("a", "online", Some(("NVIDIA A100-SXM4-80GB", 10)), 5.0),
            node("bb", "offline", None, 0.0),
            node("c", "online", Some(("NVIDIA H100", 70)), 50.0),
        ];
        let q = |status: &str, label: &str, gpu: &str| FleetQuery {
            status: status.into(),
            label: label.into(),
            gpu: gpu.into(),
            ..FleetQuery::default()
        };
        assert_eq!(ids(&select(&views, &q("online", "", ""))), ["a", "c"]);
        assert_eq!(ids(&select(&views, &q("", "zone=z0", ""))), ["bb"]);
        assert_eq!(ids(&select(&views, &q("", "zone", ""))), ["a", "bb", "c"]);
        assert_eq!(ids(&select(&views, &q("", "", "a100"))), ["a"]);
        assert_eq!(
            ids(&select(&views, &q("", "nope=1", ""))),
            Vec::<String>::new()
        );
        let sorted = |sort: &str| {
            ids(&select(
                &views,
                &FleetQuery {
                    sort: sort.into(),
                    ..FleetQuery::default()
                },
            ))
        };
        assert_eq!(sorted("gpu_free"), ["c", "a", "bb"]);
        assert_eq!(sorted("cpu"), ["c", "a", "bb"]);
        assert_eq!(sorted("status"), ["bb", "a", "c"]);
    }

    #[test]
    fn ten_thousand_nodes_come_a_page_at_a_time() {
        let views: Vec<NodeView> = (0..10_000)
            .map(|i| node(&format!("n-{i:05}"), "online", None, 0.0))
            .collect();
        let first = select(&views, &FleetQuery::default());
        assert_eq!(first.rows.len(), PAGE_SIZE);
        assert_eq!((first.page, first.pages, first.matching), (1, 200, 10_000));
        let last = select(
            &views,
            &FleetQuery {
                page: 10_000,
                ..FleetQuery::default()
            },
        );
        assert_eq!(last.page, 200, "past the end gives the last page");
        assert_eq!(id(last.rows[PAGE_SIZE - 1]), "n-09999");
    }

    #[test]
    fn the_query_string_round_trips_its_selection() {
        let query = FleetQuery {
            status: "online".into(),
            label: "zone=eu west".into(),
            gpu: String::new(),
            sort: "gpu_free".into(),
            page: 1,
        };
        assert_eq!(
            query.to_query(3),
            "status=online&label=zone%3Deu%20west&sort=gpu_free&page=3"
        );
    }
}
