//! The frame every console page shares (navigation, who is signed in, sign-out), the sign-in
//! and error pages, and small pieces of markup the pages reuse.

use maud::{DOCTYPE, Markup, html};
use outpost_proto::v1::GpuDevice;

use super::Operator;

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Fleet,
    Agents,
    Tasks,
    Tools,
    Audit,
    Reviews,
    Join,
    Register,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Outpost" }
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

/// A page with the navigation for `operator`.
pub fn page(operator: &Operator, section: Section, title: &str, body: Markup) -> Markup {
    let entries = [
        (Section::Fleet, "/", "Fleet", false),
        (Section::Agents, "/ui/agents", "Agents", false),
        (Section::Tasks, "/ui/tasks", "Tasks", false),
        (Section::Tools, "/ui/tools", "Tools", false),
        (Section::Audit, "/ui/audit", "Audit", false),
        (Section::Reviews, "/ui/reviews", "Reviews", false),
        (Section::Join, "/ui/join", "Join node with token", true),
        (Section::Register, "/ui/register", "Register node", true),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    nav {
                        a.brand href="/" { "Outpost" }
                        @for (entry, href, label, admin_only) in entries {
                            @if !admin_only || operator.can_write() {
                                a href=(href) aria-current=[(entry == section).then_some("page")] { (label) }
                            }
                        }
                        span.who {
                            (operator.session.subject) " (" (operator.session.role.to_string()) ")"
                        }
                        form.inline method="post" action="/ui/sign-out" {
                            (csrf(operator))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field every form of `operator` carries.
pub fn csrf(operator: &Operator) -> Markup {
    html! { input type="hidden" name="csrf" value=(operator.session.csrf); }
}

/// A one-button form that posts to `action`.
pub fn button_form(operator: &Operator, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(operator))
            button class=(class) type="submit" { (label) }
        }
    }
}

/// The sign-in page; `error` is shown above the form when not empty.
pub fn sign_in_page(nonce: &str, next: &str, error: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main.narrow {
                    h1 { "Sign in to Outpost" }
                    @if !error.is_empty() {
                        p.error role="alert" { (error) }
                    }
                    form method="post" action="/ui/sign-in" {
                        input type="hidden" name="csrf" value=(nonce);
                        input type="hidden" name="next" value=(next);
                        label for="token" { "API token (admin or viewer)" }
                        textarea #token name="token" rows="4" required autocomplete="off" spellcheck="false" {}
                        p.hint { "Mint one with " code { "outpost token api --role viewer" } " (or " code { "--role admin" } ")." }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A page that says what went wrong.
pub fn error_page(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                main.narrow {
                    h1 { (title) }
                    p.error role="alert" { (message) }
                    p { a href="/" { "Back to the fleet" } }
                }
            }
        }
    }
}

/// The status as a badge.
pub fn status(status: &str) -> Markup {
    html! { span class={ "status status-" (status) } { (status) } }
}

/// Milliseconds since the epoch as UTC text (`-` for none).
pub fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "-".into(),
    }
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One GPU: its model, a bar of memory used against free, utilisation and temperature.
pub fn gpu(device: &GpuDevice) -> Markup {
    let used = device.memory_total_mb.saturating_sub(device.memory_free_mb);
    html! {
        div.gpu data-gpu=(device.index) {
            span.gpu-name { "GPU " (device.index) " · " (device.name) }
            meter min="0" max=(device.memory_total_mb) value=(used)
                title={ (used) " MiB used of " (device.memory_total_mb) " MiB" } {}
            span.gpu-numbers {
                (used) " MiB used / " (device.memory_free_mb) " MiB free · "
                (device.utilization_percent) "% util · " (device.temperature_c) " °C"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(time(0), "-");
        assert_eq!(time(1_000), "1970-01-01T00:00:01Z");
    }

    #[test]
    fn text_from_the_fleet_is_escaped() {
        let device = GpuDevice {
            name: "<script>alert(1)</script>".into(),
            memory_total_mb: 100,
            memory_free_mb: 40,
            ..GpuDevice::default()
        };
        let html = gpu(&device).into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("value=\"60\""), "{html}");
        let page = error_page("Oops", "\"><img src=x onerror=alert(1)>").into_string();
        assert!(!page.contains("<img"), "{page}");
    }
}
