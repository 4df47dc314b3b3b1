//! Table-driven tests of the lifecycle, every race included: two events computed from the same
//! read, written in both orders against a store twin that enforces the guard as the real store's
//! compare-and-set does; the loser reads again and asks again, as the engine does.

use std::collections::BTreeMap;

use super::*;

/// The store as the lifecycle sees it: one task, its attempts, and the late-result count.
#[derive(Debug, Clone)]
struct World {
    task: TaskRow,
    attempts: BTreeMap<i64, AttemptRow>,
    now_ms: i64,
}

/// Something that happens to a task.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// The scheduler places it on a node.
    Place(&'static str),
    /// The node accepted the attempt.
    Accepted,
    /// A node reports attempt `n`: ok, or an error of this kind.
    Result(&'static str, i64, Result<(), &'static str>),
    /// The node of the current attempt is lost.
    NodeLost,
    /// An operator cancels it.
    Cancel,
    /// It cannot run (e.g. its tool was removed).
    Fail,
}

/// What deciding an event came to (for the table's expectations).
#[derive(Debug, Clone, PartialEq)]
enum Decided {
    Write(Box<Transition>),
    Late(AttemptRow),
    Nothing(&'static str),
}

impl World {
    fn new(max_attempts: i64) -> Self {
        Self {
            task: TaskRow {
                id: "task-1".into(),
                tool: "echo".into(),
                max_attempts,
                created_at_ms: 1_000,
                updated_at_ms: 1_000,
                ..TaskRow::default()
            },
            attempts: BTreeMap::new(),
            now_ms: 1_000,
        }
    }

    /// Decides `event` against the task as it is stored now.
    fn decide(&mut self, event: Event) -> Decided {
        self.now_ms += 10;
        let now = self.now_ms;
        let task = &self.task;
        match event {
            Event::Place(node) => {
                if task.status != TaskStatus::Queued {
                    return Decided::Nothing("not queued");
                }
                let placement = Placement {
                    node_id: node.into(),
                    devices: vec![],
                    device_uuids: vec![],
                    cuda_devices: vec![],
                    share_milli: 1000,
                    memory_mb: 0,
                };
                Decided::Write(Box::new(place(task, &placement, now)))
            }
            Event::Accepted => mark_running(task, now)
                .map_or(Decided::Nothing("not placed"), |t| {
                    Decided::Write(Box::new(t))
                }),
            Event::NodeLost => lose_attempt(task, "node went offline", now)
                .map_or(Decided::Nothing("no attempt out"), |t| {
                    Decided::Write(Box::new(t))
                }),
            Event::Cancel => {
                cancel(task, now).map_or(Decided::Nothing("ended"), |t| Decided::Write(Box::new(t)))
            }
            Event::Fail => fail(task, "tool_missing", "tool was removed", now)
                .map_or(Decided::Nothing("ended"), |t| Decided::Write(Box::new(t))),
            Event::Result(node, attempt, outcome) => {
                let placed = if is_current(task, node, attempt) {
                    current_attempt(task)
                } else {
                    match self.attempts.get(&attempt) {
                        Some(row) => row.clone(),
                        None => return Decided::Nothing("attempt never placed"),
                    }
                };
                let result = TaskResult {
                    task_id: task.id.clone(),
                    attempt: u32::try_from(attempt).unwrap(),
                    ok: outcome.is_ok(),
                    output: if outcome.is_ok() {
                        "out".into()
                    } else {
                        String::new()
                    },
                    error_kind: outcome.err().unwrap_or_default().into(),
                    error_message: outcome.err().map(|k| format!("{k}!")).unwrap_or_default(),
                    duration_us: 7,
                    fuel_used: 9,
                    ..TaskResult::default()
                };
                match judge_result(task, &placed, node, &result, now) {
                    ResultVerdict::Finish(t) => Decided::Write(t),
                    ResultVerdict::Late(row) => Decided::Late(row),
                    ResultVerdict::AlreadyEnded => Decided::Nothing("attempt ended"),
                    ResultVerdict::WrongNode { .. } => Decided::Nothing("wrong node"),
                }
            }
        }
    }

    /// Writes a decision as the store would; false when the guard no longer admits it.
    fn write(&mut self, decided: &Decided) -> bool {
        match decided {
            Decided::Write(t) => {
                if !t.guard.admits(&self.task) {
                    return false;
                }
                self.task = t.task.clone();
                if let Some(attempt) = &t.attempt {
                    self.attempts.insert(attempt.attempt, attempt.clone());
                }
                true
            }
            Decided::Late(row) => {
                self.attempts.insert(row.attempt, row.clone());
                self.task.late_results += 1;
                true
            }
            Decided::Nothing(_) => true,
        }
    }

    /// Decides and writes, reading again after a lost compare-and-set (as the engine does).
    fn handle(&mut self, event: Event) -> Decided {
        loop {
            let decided = self.decide(event);
            if self.write(&decided) {
                return decided;
            }
        }
    }

    /// `first` and `second` decided from the same read; `first` is written first, `second`
    /// loses the compare-and-set when the read is stale and is then decided again.
    fn race(&mut self, first: Event, second: Event) -> (Decided, Decided) {
        let a = self.decide(first);
        let b = self.decide(second);
        assert!(self.write(&a), "the first write of a race always lands");
        let b = if self.write(&b) {
            b
        } else {
            self.handle(second)
        };
        (a, b)
    }

    fn attempt_statuses(&self) -> Vec<(i64, AttemptStatus)> {
        self.attempts
            .values()
            .map(|a| (a.attempt, a.status))
            .collect()
    }
}

/// A task placed on node `a` (attempt 1), optionally running.
fn out_on_a(running: bool, max_attempts: i64) -> World {
    let mut world = World::new(max_attempts);
    world.handle(Event::Place("a"));
    if running {
        world.handle(Event::Accepted);
    }
    world
}

use AttemptStatus as A;
use Event as E;
use TaskStatus as T;

const OK: Result<(), &str> = Ok(());

#[test]
fn status_names_round_trip_and_unknown_ones_are_named() {
    for status in TaskStatus::ALL {
        assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        assert_eq!(status.to_string(), status.as_str());
    }
    for status in AttemptStatus::ALL {
        assert_eq!(status.as_str().parse::<AttemptStatus>(), Ok(status));
    }
    assert_eq!(
        "lost".parse::<TaskStatus>(),
        Err(UnknownStatus("lost".into()))
    );
    let terminal: Vec<_> = TaskStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(terminal, [T::Succeeded, T::Failed, T::Cancelled]);
}

#[test]
fn single_events_from_each_state() {
    struct Case {
        name: &'static str,
        start: fn() -> World,
        event: Event,
        status: TaskStatus,
        attempts: Vec<(i64, AttemptStatus)>,
        late: i64,
    }
    let cases = [
        Case {
            name: "placing a queued task starts attempt 1",
            start: || World::new(3),
            event: E::Place("a"),
            status: T::Placed,
            attempts: vec![(1, A::Placed)],
            late: 0,
        },
        Case {
            name: "an accepted attempt runs",
            start: || out_on_a(false, 3),
            event: E::Accepted,
            status: T::Running,
            attempts: vec![(1, A::Running)],
            late: 0,
        },
        Case {
            name: "a quick result goes from placed to succeeded in one write",
            start: || out_on_a(false, 3),
            event: E::Result("a", 1, OK),
            status: T::Succeeded,
            attempts: vec![(1, A::Succeeded)],
            late: 0,
        },
        Case {
            name: "an error result fails the task",
            start: || out_on_a(true, 3),
            event: E::Result("a", 1, Err("out_of_fuel")),
            status: T::Failed,
            attempts: vec![(1, A::Failed)],
            late: 0,
        },
        Case {
            name: "a result of kind cancelled cancels the task",
            start: || out_on_a(true, 3),
            event: E::Result("a", 1, Err("cancelled")),
            status: T::Cancelled,
            attempts: vec![(1, A::Cancelled)],
            late: 0,
        },
        Case {
            name: "a lost node with attempts left queues the task again",
            start: || out_on_a(true, 3),
            event: E::NodeLost,
            status: T::Queued,
            attempts: vec![(1, A::Lost)],
            late: 0,
        },
        Case {
            name: "a lost node on the last attempt fails the task",
            start: || out_on_a(true, 1),
            event: E::NodeLost,
            status: T::Failed,
            attempts: vec![(1, A::Lost)],
            late: 0,
        },
        Case {
            name: "cancelling a queued task writes no attempt",
            start: || World::new(3),
            event: E::Cancel,
            status: T::Cancelled,
            attempts: vec![],
            late: 0,
        },
        Case {
            name: "cancelling a running task ends its attempt",
            start: || out_on_a(true, 3),
            event: E::Cancel,
            status: T::Cancelled,
            attempts: vec![(1, A::Cancelled)],
            late: 0,
        },
        Case {
            name: "a task that cannot run fails and ends the attempt that was out",
            start: || out_on_a(false, 3),
            event: E::Fail,
            status: T::Failed,
            attempts: vec![(1, A::Failed)],
            late: 0,
        },
        Case {
            name: "a result from a node the attempt was not placed on is dropped",
            start: || out_on_a(true, 3),
            event: E::Result("b", 1, OK),
            status: T::Running,
            attempts: vec![(1, A::Running)],
            late: 0,
        },
        Case {
            name: "a result for an attempt never placed is dropped",
            start: || out_on_a(true, 3),
            event: E::Result("a", 7, OK),
            status: T::Running,
            attempts: vec![(1, A::Running)],
            late: 0,
        },
        Case {
            name: "a result after the node was lost is late: recorded, counted, not reported",
            start: || {
                let mut world = out_on_a(true, 3);
                world.handle(E::NodeLost);
                world
            },
            event: E::Result("a", 1, OK),
            status: T::Queued,
            attempts: vec![(1, A::Succeeded)],
            late: 1,
        },
        Case {
            name: "a late result after a re-run elsewhere leaves the new attempt alone",
            start: || {
                let mut world = out_on_a(true, 3);
                world.handle(E::NodeLost);
                world.handle(E::Place("b"));
                world
            },
            event: E::Result("a", 1, OK),
            status: T::Placed,
            attempts: vec![(1, A::Succeeded), (2, A::Placed)],
            late: 1,
        },
        Case {
            name: "a repeated result changes nothing",
            start: || {
                let mut world = out_on_a(true, 3);
                world.handle(E::Result("a", 1, OK));
                world
            },
            event: E::Result("a", 1, Err("trap")),
            status: T::Succeeded,
            attempts: vec![(1, A::Succeeded)],
            late: 0,
        },
        Case {
            name: "an ended task cannot be cancelled",
            start: || {
                let mut world = out_on_a(true, 3);
                world.handle(E::Result("a", 1, OK));
                world
            },
            event: E::Cancel,
            status: T::Succeeded,
            attempts: vec![(1, A::Succeeded)],
            late: 0,
        },
        Case {
            name: "losing a node changes nothing for a queued task",
            start: || World::new(3),
            event: E::NodeLost,
            status: T::Queued,
            attempts: vec![],
            late: 0,
        },
    ];
    for case in cases {
        let mut world = (case.start)();
        world.handle(case.event);
        assert_eq!(world.task.status, case.status, "{}", case.name);
        assert_eq!(world.attempt_statuses(), case.attempts, "{}", case.name);
        assert_eq!(world.task.late_results, case.late, "{}", case.name);
    }
}

#[test]
fn every_race_of_two_events_ends_consistently_in_either_order() {
    struct Race {
        name: &'static str,
        start: fn() -> World,
        first: Event,
        second: Event,
        status: TaskStatus,
        attempts: Vec<(i64, AttemptStatus)>,
        late: i64,
    }
    let races = [
        Race {
            name: "result, then node loss: the result wins",
            start: || out_on_a(true, 3),
            first: E::Result("a", 1, OK),
            second: E::NodeLost,
            status: T::Succeeded,
            attempts: vec![(1, A::Succeeded)],
            late: 0,
        },
        Race {
            name: "node loss, then result: requeued, and the result is late",
            start: || out_on_a(true, 3),
            first: E::NodeLost,
            second: E::Result("a", 1, OK),
            status: T::Queued,
            attempts: vec![(1, A::Succeeded)],
            late: 1,
        },
        Race {
            name: "result, then cancel: the result wins, the cancel is refused",
            start: || out_on_a(true, 3),
            first: E::Result("a", 1, OK),
            second: E::Cancel,
            status: T::Succeeded,
            attempts: vec![(1, A::Succeeded)],
            late: 0,
        },
        Race {
            name: "cancel, then result: cancelled, the result is ignored",
            start: || out_on_a(true, 3),
            first: E::Cancel,
            second: E::Result("a", 1, OK),
            status: T::Cancelled,
            attempts: vec![(1, A::Cancelled)],
            late: 0,
        },
        Race {
            name: "cancel, then node loss: cancelled",
            start: || out_on_a(true, 3),
            first: E::Cancel,
            second: E::NodeLost,
            status: T::Cancelled,
            attempts: vec![(1, A::Cancelled)],
            late: 0,
        },
        Race {
            name: "node loss, then cancel: the requeued task is cancelled",
            start: || out_on_a(true, 3),
            first: E::NodeLost,
            second: E::Cancel,
            status: T::Cancelled,
            attempts: vec![(1, A::Lost)],
            late: 0,
        },
        Race {
            name: "accepted, then a quick result: succeeded from running",
            start: || out_on_a(false, 3),
            first: E::Accepted,
            second: E::Result("a", 1, OK),
            status: T::Succeeded,
            attempts: vec![(1, A::Succeeded)],
            late: 0,
        },
        Race {
            name: "a quick result, then accepted: the running mark is dropped",
            start: || out_on_a(false, 3),
            first: E::Result("a", 1, OK),
            second: E::Accepted,
            status: T::Succeeded,
            attempts: vec![(1, A::Succeeded)],
            late: 0,
        },
        Race {
            name: "node loss on the last attempt, then result: failed node_lost, result late",
            start: || out_on_a(true, 1),
            first: E::NodeLost,
            second: E::Result("a", 1, OK),
            status: T::Failed,
            attempts: vec![(1, A::Succeeded)],
            late: 1,
        },
        Race {
            name: "two results for one attempt: the first one counts",
            start: || out_on_a(true, 3),
            first: E::Result("a", 1, Err("trap")),
            second: E::Result("a", 1, OK),
            status: T::Failed,
            attempts: vec![(1, A::Failed)],
            late: 0,
        },
        Race {
            name: "cancel, then placement of the queued task: cancelled, never placed",
            start: || World::new(3),
            first: E::Cancel,
            second: E::Place("a"),
            status: T::Cancelled,
            attempts: vec![],
            late: 0,
        },
        Race {
            name: "placement, then cancel: the attempt is ended as cancelled",
            start: || World::new(3),
            first: E::Place("a"),
            second: E::Cancel,
            status: T::Cancelled,
            attempts: vec![(1, A::Cancelled)],
            late: 0,
        },
    ];
    for race in races {
        let mut world = (race.start)();
        world.race(race.first, race.second);
        assert_eq!(world.task.status, race.status, "{}", race.name);
        assert_eq!(world.attempt_statuses(), race.attempts, "{}", race.name);
        assert_eq!(world.task.late_results, race.late, "{}", race.name);
    }
}

#[test]
fn a_stale_transition_is_refused_by_its_guard() {
    let mut world = out_on_a(true, 3);
    let stale = world.decide(E::NodeLost);
    world.handle(E::Result("a", 1, OK));
    assert!(
        !world.write(&stale),
        "a loss computed before the result must not land"
    );
    assert_eq!(world.task.status, T::Succeeded);
}

#[test]
fn requeue_and_out_of_attempts_say_why_and_clear_the_placement() {
    let mut world = out_on_a(true, 2);
    let Decided::Write(requeued) = world.handle(E::NodeLost) else {
        panic!("a running task's loss writes");
    };
    assert_eq!(
        requeued.task.reason,
        "node went offline; waiting to be placed again (attempt 1 of 2 used)"
    );
    assert!(requeued.task.started_at_ms.is_none() && requeued.task.devices.is_empty());
    let lost = requeued
        .attempt
        .expect("the attempt is ended in the same write");
    assert_eq!(
        (lost.error_kind.as_str(), lost.status),
        (NODE_LOST, A::Lost)
    );
    world.handle(E::Place("b"));
    let Decided::Write(failed) = world.handle(E::NodeLost) else {
        panic!("the last attempt's loss writes");
    };
    assert_eq!(failed.task.error_kind, NODE_LOST);
    assert_eq!(
        failed.task.error_message,
        "node went offline; no attempts left (2 of 2)"
    );
    assert!(failed.task.finished_at_ms.is_some());
}

#[test]
fn a_finished_task_keeps_the_result_and_when_it_started() {
    let mut world = out_on_a(false, 3);
    let placed_at = world.attempts[&1].started_at_ms;
    let Decided::Write(done) = world.handle(E::Result("a", 1, OK)) else {
        panic!("the current attempt's result writes");
    };
    assert_eq!(done.task.output.as_deref(), Some("out"));
    assert_eq!(done.task.reason, "succeeded on a");
    assert_eq!((done.task.duration_us, done.task.fuel_used), (7, 9));
    assert_eq!(done.task.started_at_ms, Some(placed_at));
    let failed = judge_result(
        &world.task,
        &world.attempts[&1],
        "a",
        &TaskResult::default(),
        0,
    );
    assert_eq!(failed, ResultVerdict::AlreadyEnded);
    let mut fresh = out_on_a(true, 3);
    fresh.handle(E::Result("a", 1, Err("timeout")));
    assert_eq!(fresh.task.reason, "timeout on a: timeout!");
    assert_eq!(fresh.task.output, None);
}
