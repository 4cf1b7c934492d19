//! Bytes-stored progress, drawn only when stderr is a terminal: ECS logs want one summary
//! line per artifact, not carriage returns.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    pub fn hidden() -> Progress {
        Progress(ProgressBar::hidden())
    }

    pub fn for_terminal(label: impl Into<String>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg}: {bytes} stored, {binary_bytes_per_sec}, {elapsed}",
            )
            .expect("static template"),
        );
        bar.set_message(label.into());
        Progress(bar)
    }

    pub fn stored(&self, n: u64) {
        self.0.inc(n);
    }

    pub fn done(&self) {
        self.0.finish_and_clear();
    }
}
