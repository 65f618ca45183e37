//! `watchdog`: when no answer or tool-call output has gone to the client for
//! `no_final_timeout` (a model that reasons forever), end the response with
//! `finish_reason: "length"` and stop reading the upstream, which cancels the generation.
//! The timer is this stage's deadline, polled by the response body: no task per request.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Event, FinishReason};
use crate::stage::{RequestMeta, Stage, StageFactory, Stats};
use crate::values::Dur;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    #[serde(default = "default_timeout")]
    pub no_final_timeout: Dur,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(90))
}

pub struct WatchdogFactory(pub Duration);

impl StageFactory for WatchdogFactory {
    fn new_stage(&self, _req: &RequestMeta) -> Box<dyn Stage> {
        Box::new(Watchdog { timeout: self.0, deadline: Instant::now() + self.0, fired: false })
    }
}

pub struct Watchdog {
    timeout: Duration,
    deadline: Instant,
    fired: bool,
}

impl Stage for Watchdog {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        if self.fired {
            return; // the response is over; anything still flushing is dropped
        }
        if matches!(ev, Event::Content(_) | Event::ClientToolCall { .. } | Event::ClientToolArgs { .. }) {
            self.deadline = Instant::now() + self.timeout;
        }
        out.push(ev);
    }
    fn deadline(&self) -> Option<Instant> {
        (!self.fired).then_some(self.deadline)
    }
    fn on_deadline(&mut self, out: &mut Vec<Event>) {
        self.fired = true;
        out.push(Event::Finish(FinishReason::Length));
        out.push(Event::Abort);
    }
    fn stats(&self, st: &mut Stats) {
        st.watchdog_aborts += u64::from(self.fired);
    }
}

impl crate::stage::StageConfig for WatchdogConfig {
    /// It watches what the client gets.
    fn place() -> crate::stage::config::Place {
        use crate::stage::config::{Order, Other::*, Place};
        Place {
            rules: &[Order {
                after: &[IfPresent("tool-bridge")],
                before: &[],
                message: "`watchdog` must come after `tool-bridge` (it watches what the client gets)",
            }],
            ..Place::ONCE
        }
    }
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        b.push(WatchdogFactory(self.no_final_timeout.0));
    }
}
