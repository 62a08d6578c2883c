//! `Outbox`: what a job actor writes next, and in which order. Outcome and command events
//! go in the order they were taken; a cancel goes after all of them, because it ends the
//! job and nothing may follow it. A command is marked applied only once its event is
//! durable (or at once if it adds none), and each command is taken once per incarnation.

use aetheris_runtime::EventBody;
use std::collections::HashSet;

#[derive(Default)]
pub(super) struct Outbox {
    /// Outcome and command events not yet appended, in the order taken.
    events: Vec<EventBody>,
    /// The commands whose events sit in `events`.
    event_commands: Vec<u64>,
    /// A taken cancel and its command: appended after `events`.
    cancel: Option<(u64, EventBody)>,
    /// Commands whose events are durable (or that need none), to mark applied.
    applied: Vec<u64>,
    /// Every command this incarnation has taken, so a re-read never applies one twice.
    taken: HashSet<u64>,
}

impl Outbox {
    pub(super) fn push(&mut self, event: EventBody) {
        self.events.push(event);
    }

    /// The events not yet appended, in append order, with the cancel (last) or without
    /// it: what the job's next state is projected from.
    pub(super) fn pending(&self, with_cancel: bool) -> impl Iterator<Item = &EventBody> {
        let cancel = self
            .cancel
            .as_ref()
            .filter(|_| with_cancel)
            .map(|(_, event)| event);
        self.events.iter().chain(cancel)
    }

    /// `false` if command `id` was already taken by this incarnation.
    pub(super) fn take_command(&mut self, id: u64) -> bool {
        self.taken.insert(id)
    }

    pub(super) fn push_command_event(&mut self, id: u64, event: EventBody) {
        self.events.push(event);
        self.event_commands.push(id);
    }

    pub(super) fn is_cancelling(&self) -> bool {
        self.cancel.is_some()
    }

    pub(super) fn set_cancel(&mut self, id: u64, event: EventBody) {
        self.cancel = Some((id, event));
    }

    /// A command that adds no event: done once marked.
    pub(super) fn mark_applied(&mut self, id: u64) {
        self.applied.push(id);
    }

    /// Everything pending, in append order; their commands become `applied`, to be marked
    /// once the append is durable.
    pub(super) fn take_events(&mut self) -> Vec<EventBody> {
        let mut events = std::mem::take(&mut self.events);
        self.applied.append(&mut self.event_commands);
        if let Some((id, cancel)) = self.cancel.take() {
            events.push(cancel);
            self.applied.push(id);
        }
        events
    }

    pub(super) fn has_applied(&self) -> bool {
        !self.applied.is_empty()
    }

    pub(super) fn take_applied(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: u64) -> EventBody {
        EventBody::SignalReceived {
            signal: "go".into(),
            signal_id: format!("s{n}"),
            payload: serde_json::Value::Null,
            by: None,
            command_id: n,
        }
    }

    fn cancel(n: u64) -> EventBody {
        EventBody::JobCancelled {
            by: "ops".into(),
            reason: "r".into(),
            command_id: n,
        }
    }

    #[test]
    fn a_cancel_goes_last_whatever_was_taken_after_it() {
        let mut outbox = Outbox::default();
        outbox.push_command_event(1, signal(1));
        outbox.set_cancel(2, cancel(2));
        outbox.push_command_event(3, signal(3));
        assert_eq!(outbox.pending(false).count(), 2);
        assert_eq!(
            outbox.pending(true).cloned().collect::<Vec<_>>(),
            vec![signal(1), signal(3), cancel(2)]
        );
        assert_eq!(outbox.take_events(), vec![signal(1), signal(3), cancel(2)]);
        assert!(!outbox.is_cancelling());
        assert_eq!(outbox.pending(true).count(), 0);
    }

    #[test]
    fn commands_are_marked_applied_only_once_their_events_are_taken_for_append() {
        let mut outbox = Outbox::default();
        outbox.push_command_event(1, signal(1));
        outbox.mark_applied(2);
        assert_eq!(outbox.take_applied(), vec![2]);
        assert!(!outbox.has_applied());
        outbox.take_events();
        assert_eq!(outbox.take_applied(), vec![1]);
    }

    #[test]
    fn a_command_is_taken_once() {
        let mut outbox = Outbox::default();
        assert!(outbox.take_command(7));
        assert!(!outbox.take_command(7));
        assert!(outbox.take_command(8));
    }
}
