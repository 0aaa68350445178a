//! Progress output of a run: a line per test, and on a terminal one redrawn status
//! line with a bar per kernel.

use std::sync::Arc;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A line per test on stderr.
    Lines,
    /// On a terminal: the same lines, under them one redrawn status line with a bar
    /// per kernel (tests done, crashes, recoveries).
    Bars,
    /// Nothing.
    Quiet,
}

/// One kernel's place in the run, for the status line.
#[derive(Debug, Clone, Default)]
pub(super) struct KernelStatus {
    pub(super) kernel: String,
    pub(super) done: usize,
    pub(super) total: usize,
    pub(super) crashes: usize,
    pub(super) recovered: usize,
}

/// Progress output shared by the kernel tasks.
#[derive(Debug, Clone)]
pub(super) struct Reporter {
    pub(super) mode: Progress,
    pub(super) board: Arc<std::sync::Mutex<Vec<KernelStatus>>>,
}

impl Reporter {
    pub(super) fn status(board: &[KernelStatus]) -> String {
        const WIDTH: usize = 12;
        let mut line = board
            .iter()
            .map(|k| {
                let filled = (k.done * WIDTH)
                    .checked_div(k.total)
                    .unwrap_or(0)
                    .min(WIDTH);
                let short = k.kernel.split('+').next().unwrap_or(&k.kernel);
                format!(
                    "{short} [{}{}] {}/{} crashes {} recovered {}",
                    "#".repeat(filled),
                    "-".repeat(WIDTH - filled),
                    k.done,
                    k.total,
                    k.crashes,
                    k.recovered
                )
            })
            .collect::<Vec<_>>()
            .join(" | ");
        line.truncate(200);
        line
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Vec<KernelStatus>> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prints a line (above the status line on a terminal).
    pub(super) fn line(&self, msg: &str) {
        match self.mode {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("{msg}"),
            Progress::Bars => eprint!("\r\x1b[2K{msg}\n{}", Self::status(&self.board())),
        }
    }

    /// Updates one kernel's status and redraws the status line.
    pub(super) fn update(&self, slot: usize, f: impl FnOnce(&mut KernelStatus)) {
        let mut board = self.board();
        if let Some(k) = board.get_mut(slot) {
            f(k);
        }
        if self.mode == Progress::Bars {
            eprint!("\r\x1b[2K{}", Self::status(&board));
        }
    }

    /// Clears the status line at the end.
    pub(super) fn finish(&self) {
        if self.mode == Progress::Bars {
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_shows_a_bar_per_kernel() {
        let board = [
            KernelStatus {
                kernel: "6.12.117+deb12-amd64".into(),
                done: 3,
                total: 12,
                crashes: 1,
                recovered: 1,
            },
            KernelStatus {
                kernel: "6.1.0-57-amd64".into(),
                total: 0,
                ..Default::default()
            },
        ];
        assert_eq!(
            Reporter::status(&board),
            "6.12.117 [###---------] 3/12 crashes 1 recovered 1 | \
             6.1.0-57-amd64 [------------] 0/0 crashes 0 recovered 0"
        );
    }
}
