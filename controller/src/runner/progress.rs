//! Progress output of a run: a line per test, and on a terminal a bar per kernel
//! (indicatif) under the lines. Off a terminal (`Progress::Lines`, chosen by the CLI
//! when stderr is not a tty) the lines are plain `eprintln!`s: no escapes, no colour,
//! so NO_COLOR and log files need nothing more.

use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A line per test on stderr.
    Lines,
    /// On a terminal: the same lines, under them a bar per kernel (tests done,
    /// crashes, recoveries).
    Bars,
    /// Nothing.
    Quiet,
}

/// One kernel's place in the run, for its bar.
#[derive(Debug, Clone, Default)]
pub(super) struct KernelStatus {
    pub(super) kernel: String,
    pub(super) done: usize,
    pub(super) total: usize,
    pub(super) crashes: usize,
    pub(super) recovered: usize,
    /// Its bar, made at the first draw (Bars only).
    pub(super) bar: Option<Bar>,
}

/// A kernel's bar and the group it is drawn in.
#[derive(Debug, Clone)]
pub(super) struct Bar {
    multi: MultiProgress,
    bar: ProgressBar,
}

/// No colour in the template: the bars are plain text, NO_COLOR or not.
const TEMPLATE: &str = "{prefix} [{bar:12}] {pos}/{len} {msg}";

impl KernelStatus {
    /// The kernel as the bar names it: `6.12.117` for `6.12.117+deb12-amd64`.
    fn short(&self) -> &str {
        self.kernel.split('+').next().unwrap_or(&self.kernel)
    }

    /// The text after the bar.
    fn message(&self) -> String {
        format!("crashes {} recovered {}", self.crashes, self.recovered)
    }

    /// Brings the bar (if any) up to date with the counts.
    fn draw(&self) {
        if let Some(b) = &self.bar {
            b.bar.set_length(self.total as u64);
            b.bar.set_position(self.done as u64);
            b.bar.set_message(self.message());
        }
    }
}

/// Progress output shared by the kernel tasks.
#[derive(Debug, Clone)]
pub(super) struct Reporter {
    pub(super) mode: Progress,
    pub(super) board: Arc<std::sync::Mutex<Vec<KernelStatus>>>,
}

impl Reporter {
    fn board(&self) -> std::sync::MutexGuard<'_, Vec<KernelStatus>> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives every kernel its bar in one group drawn to `target`, once.
    fn attach(board: &mut [KernelStatus], target: impl FnOnce() -> ProgressDrawTarget) {
        if board.first().is_none_or(|k| k.bar.is_some()) {
            return;
        }
        let multi = MultiProgress::with_draw_target(target());
        let style = ProgressStyle::with_template(TEMPLATE)
            .expect("the bar template is valid")
            .progress_chars("#-");
        for k in board.iter_mut() {
            let bar = multi.add(ProgressBar::new(k.total as u64));
            bar.set_style(style.clone());
            bar.set_prefix(k.short().to_string());
            k.bar = Some(Bar {
                multi: multi.clone(),
                bar,
            });
            k.draw();
        }
    }

    /// The bars of this run, made on first use (Bars only).
    fn bars(&self) -> Option<std::sync::MutexGuard<'_, Vec<KernelStatus>>> {
        if self.mode != Progress::Bars {
            return None;
        }
        let mut board = self.board();
        Self::attach(&mut board, ProgressDrawTarget::stderr);
        Some(board)
    }

    /// Prints a line (above the bars on a terminal).
    pub(super) fn line(&self, msg: &str) {
        match self.mode {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("{msg}"),
            Progress::Bars => {
                let board = self.bars();
                match board.as_ref().and_then(|b| b.first()?.bar.as_ref()) {
                    Some(b) => {
                        let _ = b.multi.println(msg);
                    }
                    None => eprintln!("{msg}"),
                }
            }
        }
    }

    /// Updates one kernel's counts and redraws its bar.
    pub(super) fn update(&self, slot: usize, f: impl FnOnce(&mut KernelStatus)) {
        let mut board = self.bars().unwrap_or_else(|| self.board());
        if let Some(k) = board.get_mut(slot) {
            f(k);
            k.draw();
        }
    }

    /// Clears the bars at the end.
    pub(super) fn finish(&self) {
        for k in self.board().iter_mut() {
            if let Some(b) = k.bar.take() {
                b.bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Vec<KernelStatus> {
        vec![
            KernelStatus {
                kernel: "6.12.117+deb12-amd64".into(),
                done: 3,
                total: 12,
                crashes: 1,
                recovered: 1,
                ..Default::default()
            },
            KernelStatus {
                kernel: "6.1.0-57-amd64".into(),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn a_bar_per_kernel_with_its_counts() {
        let mut b = board();
        Reporter::attach(&mut b, ProgressDrawTarget::hidden);
        let bars: Vec<&ProgressBar> = b.iter().map(|k| &k.bar.as_ref().unwrap().bar).collect();
        assert_eq!(bars[0].prefix(), "6.12.117");
        assert_eq!((bars[0].position(), bars[0].length()), (3, Some(12)));
        assert_eq!(bars[0].message(), "crashes 1 recovered 1");
        assert_eq!(bars[1].prefix(), "6.1.0-57-amd64");
        assert_eq!((bars[1].position(), bars[1].length()), (0, Some(0)));
        // Attached once: a second call keeps the same bars.
        let first = bars[0].clone();
        Reporter::attach(&mut b, ProgressDrawTarget::hidden);
        first.set_position(5);
        assert_eq!(b[0].bar.as_ref().unwrap().bar.position(), 5);

        let r = Reporter {
            mode: Progress::Bars,
            board: Arc::new(std::sync::Mutex::new(b)),
        };
        r.update(1, |k| {
            k.done = 1;
            k.total = 2;
            k.crashes = 2;
        });
        let board = r.board();
        let bar = &board[1].bar.as_ref().unwrap().bar;
        assert_eq!((bar.position(), bar.length()), (1, Some(2)));
        assert_eq!(bar.message(), "crashes 2 recovered 0");
        drop(board);
        r.finish();
        assert!(r.board().iter().all(|k| k.bar.is_none()));
    }

    #[test]
    fn lines_and_quiet_make_no_bars() {
        for mode in [Progress::Lines, Progress::Quiet] {
            let r = Reporter {
                mode,
                board: Arc::new(std::sync::Mutex::new(board())),
            };
            r.update(0, |k| k.done = 4);
            r.line("a line");
            let b = r.board();
            assert_eq!(b[0].done, 4);
            assert!(b.iter().all(|k| k.bar.is_none()));
        }
    }
}
