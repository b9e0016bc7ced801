//! Stopping on SIGINT, SIGTERM or SIGHUP without leaving node processes behind.
//!
//! The scenarios' nodes are child processes, killed when their handles drop. A signal's default
//! action ends the generator at once, without dropping anything, so a generator stopped by
//! `kill` or `timeout` left its nodes running. With these handlers the generator stops the run
//! (its nodes with it) and exits with an error; `vs` passes the signal on to the run in
//! progress and starts no other.

use std::sync::Mutex;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT, SIGTERM and SIGHUP, handled from [`Signals::new`] on: they no longer end the
/// process by themselves.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Must be called within a tokio runtime.
    pub fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            term: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("handling SIGHUP")?,
        })
    }

    /// The next signal's name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// For a sequence of child runs (`vs`): once a signal arrived, the child running then gets
/// SIGTERM (so it stops its own nodes) and [`Stop::stopping`] says to start no other.
pub struct Stop {
    state: Mutex<StopState>,
}

#[derive(Default)]
struct StopState {
    /// The signal that arrived, if one did.
    signal: Option<&'static str>,
    /// The child run in progress.
    child: Option<u32>,
}

impl Stop {
    /// Handles the signals on a thread of its own from now on.
    pub fn install() -> anyhow::Result<&'static Stop> {
        let stop: &'static Stop = Box::leak(Box::new(Stop {
            state: Mutex::default(),
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the signal handler's runtime")?;
        // Handled from here on, before any child starts.
        let mut signals = {
            let _in_runtime = rt.enter();
            Signals::new()?
        };
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || stop.signalled(rt.block_on(signals.recv())))
            .context("starting the signal handler thread")?;
        Ok(stop)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signalled(&self, name: &'static str) {
        let mut state = self.state();
        state.signal = Some(name);
        if let Some(pid) = state.child {
            terminate(pid);
        }
    }

    /// The signal that arrived, if one did: start no other run.
    pub fn stopping(&self) -> Option<&'static str> {
        self.state().signal
    }

    /// The child run in progress (`None` once it has ended). A signal that came just before
    /// is passed on to it here.
    pub fn set_child(&self, pid: Option<u32>) {
        let mut state = self.state();
        state.child = pid;
        if let (Some(pid), Some(_)) = (pid, state.signal) {
            terminate(pid);
        }
    }
}

fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
