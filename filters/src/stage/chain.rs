//! The chain: a pipeline's per-request stages, pushing events through them in order.

use std::time::Instant;

use super::{Stage, Stats};
use crate::event::Event;

/// The per-request stages of one pipeline, in order, with reusable buffers.
///
/// Invariant: events leave the last stage in the order they were produced; after `end`
/// no further input is accepted.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    a: Vec<Event>,
    b: Vec<Event>,
    ended: bool,
}

impl Chain {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        Self { stages, a: Vec::with_capacity(8), b: Vec::with_capacity(8), ended: false }
    }

    /// Push several events (drained from `input`).
    pub fn push_all(&mut self, input: &mut Vec<Event>, out: &mut Vec<Event>) {
        if self.ended {
            input.clear();
            return;
        }
        std::mem::swap(&mut self.a, input);
        input.clear();
        self.run_from(0, out);
    }

    /// Runs the events in `self.a` through the stages from `first` on.
    fn run_from(&mut self, first: usize, out: &mut Vec<Event>) {
        for i in first..self.stages.len() {
            if self.a.is_empty() {
                return;
            }
            self.b.clear();
            let stage = &mut self.stages[i];
            for ev in self.a.drain(..) {
                stage.on_event(ev, &mut self.b);
            }
            std::mem::swap(&mut self.a, &mut self.b);
        }
        out.append(&mut self.a);
    }

    /// The upstream is done: flush every stage in order, each flush flowing through the rest.
    pub fn end(&mut self, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        for i in 0..self.stages.len() {
            self.a.clear();
            self.stages[i].on_end(&mut self.a);
            self.run_from(i + 1, out);
        }
        self.ended = true;
    }

    /// The earliest deadline any stage asked for.
    pub fn deadline(&self) -> Option<Instant> {
        self.stages.iter().filter_map(|s| s.deadline()).min()
    }

    /// Fire every stage whose deadline has passed.
    pub fn fire_deadlines(&mut self, now: Instant, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        for i in 0..self.stages.len() {
            if self.stages[i].deadline().is_some_and(|d| d <= now) {
                self.a.clear();
                self.stages[i].on_deadline(&mut self.a);
                self.run_from(i + 1, out);
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let mut st = Stats { first_output: None, ..Stats::default() };
        for s in &self.stages {
            s.stats(&mut st);
        }
        st
    }
}
