//! Progress bars (indicatif) for the runner's and the downloader's reporters.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;
use tfkd_runner::{EpochRecord, Reporter};

/// Epoch progress with images/s and ETA; one summary line per epoch.
pub struct Bars {
    bar: Option<ProgressBar>,
    images: usize,
    started: Instant,
}

impl Bars {
    pub fn new() -> Self {
        Self { bar: None, images: 0, started: Instant::now() }
    }
}

impl Reporter for Bars {
    fn stage(&mut self, message: &str) {
        tracing::info!("{message}");
    }

    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
        self.images = 0;
        self.started = Instant::now();
    }

    fn batch_end(&mut self, _iteration: usize, images: usize, loss: f64) {
        self.images += images;
        if let Some(bar) = &self.bar {
            let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4} {rate:.0} img/s"));
            bar.inc(1);
        }
    }

    fn epoch_end(&mut self, r: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        tracing::info!(
            "epoch {}: lr {:.5} train loss {:.4} (hard {:.4} soft {:.4}) top-1 {:.2}% | test loss {:.4} top-1 {:.2}% top-5 {:.2}% | {:.1}s {:.0} img/s",
            r.epoch, r.lr, r.train_loss, r.train_hard, r.train_soft, r.train_top1, r.test_loss, r.test_top1, r.test_top5, r.seconds, r.images_per_sec
        );
    }
}

/// A byte-progress bar for downloads and checksums.
#[derive(Default)]
pub struct DownloadBar {
    bar: Option<ProgressBar>,
}

impl tfkd_data::download::Reporter for DownloadBar {
    fn start(&mut self, what: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        self.bar = Some(bar);
    }

    fn progress(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
