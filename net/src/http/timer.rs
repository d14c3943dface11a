//! hyper's `Timer` on glommio timers (hyper needs one for
//! `header_read_timeout`).
//!
//! hyper asks for `Send + Sync` sleeps, and glommio's timers are neither:
//! they point into the reactor of the executor that made them. hyper
//! connections here are driven by a local task of the core that accepted
//! them and never leave that thread, so neither do their sleeps. That is
//! the invariant the `unsafe impl`s rest on, and it is checked: a sleep
//! polled or dropped on another thread aborts the process before touching
//! the timer.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Makes glommio timers for hyper. Only usable inside a glommio executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioTimer;

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep {
            timer: ManuallyDrop::new(glommio::timer::Timer::new(duration)),
            thread: std::thread::current().id(),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// A glommio timer pinned to the thread that made it.
struct LocalSleep {
    timer: ManuallyDrop<glommio::timer::Timer>,
    thread: ThreadId,
}

impl LocalSleep {
    fn check_thread(&self) {
        if std::thread::current().id() != self.thread {
            // Touching the timer here would race its executor: stop at once.
            eprintln!("kvd: a hyper sleep moved off the thread of its executor");
            std::process::abort();
        }
    }
}

// SAFETY: see the module doc — a `LocalSleep` is only ever polled and
// dropped on the thread that created it, which `check_thread` enforces
// before the glommio timer is touched. `Sync` adds nothing: the only access
// is through `Pin<&mut Self>` and `Drop`.
unsafe impl Send for LocalSleep {}
unsafe impl Sync for LocalSleep {}

impl hyper::rt::Sleep for LocalSleep {}

impl Future for LocalSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.check_thread();
        let timer: &mut glommio::timer::Timer = &mut self.get_mut().timer;
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

impl Drop for LocalSleep {
    fn drop(&mut self) {
        self.check_thread();
        // SAFETY: dropped exactly once, here, on its own thread.
        unsafe { ManuallyDrop::drop(&mut self.timer) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[test]
    fn sleeps_end_after_their_duration() {
        let ex = glommio::LocalExecutorBuilder::default().make().expect("executor");
        ex.run(async {
            let started = Instant::now();
            GlommioTimer.sleep(Duration::from_millis(20)).await;
            assert!(started.elapsed() >= Duration::from_millis(20));
            let deadline = Instant::now() + Duration::from_millis(5);
            GlommioTimer.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline);
        });
    }
}
