//! Spinners on stderr for what can take more than a second (a tool push, `--wait`, the demo's
//! start): drawn only when stderr is a terminal and never with `--json`, so scripts and the
//! tests see only the output itself.

use std::io::IsTerminal as _;
use std::time::Duration;

/// A spinner with a message and the time elapsed; cleared when dropped.
pub(crate) struct Spinner(Option<indicatif::ProgressBar>);

impl Spinner {
    /// Starts one unless `json` is set or stderr is not a terminal.
    pub(crate) fn start(json: bool, message: String) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(Some(bar))
    }

    /// Changes the message.
    pub(crate) fn say(&self, message: String) {
        if let Some(bar) = &self.0 {
            bar.set_message(message);
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}
