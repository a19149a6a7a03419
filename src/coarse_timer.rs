//! A timer for long deadlines that need no precision: hyper's HTTP/1.1 header-read timeout
//! (30 s), which hyper arms on every request and drops as soon as the head has arrived.
//!
//! Why not tokio's timer there: each arming registers an entry in the runtime's timer wheel
//! and each drop removes it again, which cost 0.7 µs a request in interleaved load rounds
//! (more than any layer of the gateway). Here a waiting sleep is one slab entry of its
//! thread's [`Wheel`], added and removed under a lock nobody else takes, and one task per
//! wheel sweeps it every [`TICK`], waking the sleeps that are due. So a sleep fires up to one
//! tick late, and a thread with nothing waiting has no sweeper and no wake-ups.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use slab::Slab;

/// How often a wheel with waiting sleeps is swept: the most a sleep fires late.
pub const TICK: Duration = Duration::from_secs(1);

/// The [`hyper::rt::Timer`]. Sleeps belong to the wheel of the thread that first polls them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseTimer;

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(CoarseSleep::until(deadline))
    }

    fn now(&self) -> Instant {
        now()
    }
}

/// tokio's clock: `Instant::now()`, except in tests with paused time, where deadlines and
/// sweeps then agree.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One thread's waiting sleeps. A mutex, not a `RefCell`: the sweeper task may run on
/// another thread of a multi-threaded runtime, and a sleep may be dropped anywhere.
#[derive(Debug, Default)]
pub struct Wheel(Mutex<Waiting>);

#[derive(Debug, Default)]
struct Waiting {
    sleeps: Slab<Entry>,
    /// Tells an entry from a later one that reuses its slab slot.
    next_id: u64,
    /// Whether a sweeper task is running for this wheel.
    swept: bool,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    deadline: Instant,
    waker: Waker,
}

thread_local! {
    static WHEEL: Arc<Wheel> = Arc::new(Wheel::default());
}

impl Wheel {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps waiting now (tests).
    pub fn waiting(&self) -> usize {
        self.lock().sleeps.len()
    }

    /// Whether a sweeper task is running (tests).
    pub fn is_swept(&self) -> bool {
        self.lock().swept
    }

    /// This thread's wheel.
    pub fn current() -> Arc<Wheel> {
        WHEEL.with(Arc::clone)
    }
}

/// A sleep of [`CoarseTimer`]: registered with its thread's wheel at the first poll,
/// removed from it when dropped or woken.
#[derive(Debug)]
pub struct CoarseSleep {
    deadline: Instant,
    state: State,
}

#[derive(Debug)]
enum State {
    New,
    Waiting {
        wheel: Arc<Wheel>,
        key: usize,
        id: u64,
    },
    Fired,
}

impl CoarseSleep {
    pub fn until(deadline: Instant) -> Self {
        Self {
            deadline,
            state: State::New,
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &this.state {
            State::Fired => Poll::Ready(()),
            State::Waiting { wheel, key, id } => {
                let mut waiting = wheel.lock();
                match waiting.sleeps.get_mut(*key) {
                    Some(entry) if entry.id == *id => {
                        if !entry.waker.will_wake(cx.waker()) {
                            entry.waker = cx.waker().clone();
                        }
                        Poll::Pending
                    }
                    // The sweeper took it out: it is due.
                    _ => {
                        drop(waiting);
                        this.state = State::Fired;
                        Poll::Ready(())
                    }
                }
            }
            // No clock read here: the deadline was just computed from one (hyper arms the
            // sleep right before polling it), and one already due fires at the next sweep.
            State::New => {
                let wheel = Wheel::current();
                let mut waiting = wheel.lock();
                let id = waiting.next_id;
                waiting.next_id = id.wrapping_add(1);
                let key = waiting.sleeps.insert(Entry {
                    id,
                    deadline: this.deadline,
                    waker: cx.waker().clone(),
                });
                let start = !waiting.swept;
                waiting.swept = true;
                drop(waiting);
                if start {
                    start_sweeper(&wheel);
                }
                this.state = State::Waiting { wheel, key, id };
                Poll::Pending
            }
        }
    }
}

impl Sleep for CoarseSleep {}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let State::Waiting { wheel, key, id } = &self.state {
            let mut waiting = wheel.lock();
            if waiting.sleeps.get(*key).is_some_and(|e| e.id == *id) {
                waiting.sleeps.remove(*key);
            }
        }
    }
}

/// Spawns the wheel's sweeper on the current runtime. Outside one (hyper always polls
/// inside one) the sleeps of this wheel would never fire, so that is logged.
fn start_sweeper(wheel: &Arc<Wheel>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(sweep(Arc::clone(wheel)));
        }
        Err(_) => {
            wheel.lock().swept = false;
            tracing::error!("a coarse timer was polled outside a tokio runtime; it cannot fire");
        }
    }
}

/// Every [`TICK`], wakes (and removes) the due sleeps; ends when none is left waiting.
async fn sweep(wheel: Arc<Wheel>) {
    let mut sweeper = Sweeper {
        wheel,
        running: true,
    };
    let mut due = Vec::new();
    while sweeper.running {
        tokio::time::sleep(TICK).await;
        let now = now();
        {
            let mut waiting = sweeper.wheel.lock();
            waiting.sleeps.retain(|_, e| {
                let keep = e.deadline > now;
                if !keep {
                    due.push(e.waker.clone());
                }
                keep
            });
            // Decided under the lock a new sleep takes to register: none is left unswept.
            if waiting.sleeps.is_empty() {
                waiting.swept = false;
                sweeper.running = false;
            }
        }
        // Woken outside the lock: a woken task may poll its sleep, which takes it.
        due.drain(..).for_each(Waker::wake);
    }
}

/// The sweeper task's hold on its wheel. A runtime shutting down drops the task mid-sleep:
/// the wheel is then marked unswept, so its next sleep starts a new sweeper.
struct Sweeper {
    wheel: Arc<Wheel>,
    running: bool,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if self.running {
            self.wheel.lock().swept = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `sleep` once with a waker that counts its wakes.
    fn poll_once(sleep: &mut Pin<Box<dyn Sleep>>, waker: &Waker) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_fires_within_a_tick_of_its_deadline_and_the_sweeper_then_stops() {
        let wheel = Wheel::current();
        let start = tokio::time::Instant::now();
        let mut sleep = CoarseTimer.sleep(Duration::from_millis(2500));
        sleep.as_mut().await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2500), "{took:?}");
        assert!(took <= Duration::from_millis(2500) + TICK, "{took:?}");
        assert_eq!(wheel.waiting(), 0);
        // Polled again, a fired sleep stays ready.
        assert!(poll_once(&mut sleep, Waker::noop()).is_ready());
        // The sweeper found nothing left and ended.
        assert!(!wheel.is_swept());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_sleep_leaves_the_wheel_and_never_wakes() {
        let wheel = Wheel::current();
        let mut sleep = CoarseTimer.sleep(Duration::from_secs(30));
        assert!(poll_once(&mut sleep, Waker::noop()).is_pending());
        assert_eq!(wheel.waiting(), 1);
        assert!(wheel.is_swept());
        drop(sleep);
        assert_eq!(wheel.waiting(), 0);
        // The next sweep finds the wheel empty and ends.
        tokio::time::sleep(TICK * 2).await;
        assert!(!wheel.is_swept());
        // A new sleep starts a new sweeper and still fires.
        let start = tokio::time::Instant::now();
        CoarseTimer.sleep(Duration::from_secs(3)).await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_fire_in_deadline_order_and_the_later_one_keeps_waiting() {
        let wheel = Wheel::current();
        let mut short = CoarseTimer.sleep(Duration::from_secs(2));
        let mut long = CoarseTimer.sleep(Duration::from_secs(10));
        assert!(poll_once(&mut long, Waker::noop()).is_pending());
        (&mut short).await;
        assert!(poll_once(&mut long, Waker::noop()).is_pending());
        assert_eq!(wheel.waiting(), 1);
        long.await;
        assert_eq!(wheel.waiting(), 0);
    }

    #[test]
    fn a_sleep_whose_entry_was_swept_leaves_a_reused_slot_alone_and_counts_as_fired() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        rt.block_on(async {
            let wheel = Wheel::current();
            let mut first = CoarseTimer.sleep(Duration::from_secs(30));
            assert!(poll_once(&mut first, Waker::noop()).is_pending());
            // As if swept: the entry leaves, and a new sleep takes the same slot.
            let key = match first.as_mut().downcast_mut_pin::<CoarseSleep>() {
                Some(s) => match &s.get_mut().state {
                    State::Waiting { key, .. } => *key,
                    other => panic!("the first sleep is not waiting: {other:?}"),
                },
                None => panic!("not a CoarseSleep"),
            };
            wheel.lock().sleeps.remove(key);
            let mut second = CoarseTimer.sleep(Duration::from_secs(30));
            assert!(poll_once(&mut second, Waker::noop()).is_pending());
            drop(first);
            assert_eq!(wheel.waiting(), 1, "the second sleep's entry must stay");
            // And the first, had it been polled, would have found itself fired.
            let mut third = CoarseTimer.sleep(Duration::from_secs(30));
            assert!(poll_once(&mut third, Waker::noop()).is_pending());
            wheel.lock().sleeps.clear();
            assert!(poll_once(&mut third, Waker::noop()).is_ready());
        });
    }
}
