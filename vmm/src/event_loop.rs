//! The VMM's one event loop (epoll through `event-manager`): device queue
//! work, interrupt lines that need user space, and the VM's exit signal.
//! It runs on the thread that called [`crate::vm::Vm::run`].

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::vm_exit::ExitSignal;

/// The event loop type every subscriber is added to.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

fn watch(ops: &mut EventOps, fd: &EventFd, what: &str) {
    if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
        tracing::error!(error = ?e, "cannot watch the {what}");
    }
}

/// Wakes the loop when the VM should end, so `run` can return.
pub struct ExitWatcher {
    exit: Arc<ExitSignal>,
}

impl ExitWatcher {
    /// A watcher of `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drained so the loop does not spin; the reason stays in the signal.
        let _ = self.exit.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, self.exit.event(), "VM exit signal");
    }
}

/// An interrupt eventfd that KVM cannot consume directly (no irqfd): the
/// loop turns each write into an edge on the GSI with `KVM_IRQ_LINE`.
/// Without an in-kernel irqchip (`vm` is `None`) there is nothing to raise,
/// and the events are only drained.
pub struct IrqLine {
    event: EventFd,
    gsi: u32,
    vm: Option<Arc<VmFd>>,
}

impl IrqLine {
    /// A line for `gsi` fed by `event`.
    pub fn new(event: EventFd, gsi: u32, vm: Option<Arc<VmFd>>) -> Self {
        Self { event, gsi, vm }
    }
}

impl MutEventSubscriber for IrqLine {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if self.event.read().is_err() {
            return;
        }
        if let Some(vm) = &self.vm {
            let edge = vm
                .set_irq_line(self.gsi, true)
                .and_then(|()| vm.set_irq_line(self.gsi, false));
            if let Err(e) = edge {
                tracing::warn!(gsi = self.gsi, error = %e, "cannot raise the interrupt line");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.event, "interrupt eventfd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_exit::ExitReason;
    use event_manager::SubscriberOps;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn exit_request_wakes_the_loop_and_is_drained() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut events = EventLoop::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(ExitWatcher::new(exit.clone()))));

        exit.request(ExitReason::PowerOff);
        let dispatched = events.run_with_timeout(1000).unwrap();

        assert_eq!(dispatched, 1);
        assert_eq!(events.run_with_timeout(0).unwrap(), 0, "drained");
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn irq_line_without_irqchip_drains_its_eventfd() {
        let event = EventFd::new(EFD_NONBLOCK).unwrap();
        let writer = event.try_clone().unwrap();
        let mut events = EventLoop::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(IrqLine::new(event, 4, None))));

        writer.write(1).unwrap();

        assert_eq!(events.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    }
}
