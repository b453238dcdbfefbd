//! vCPU threads: one per vCPU, each a small state machine around `KVM_RUN`.
//!
//! States: `Running` enters the guest and handles exits
//! ([`exit::handle_exit`]); `Paused` waits on a condition variable;
//! `Stopped` ends the thread. The host changes state through
//! [`VcpuControl`] and kicks each thread with a real-time signal; the signal
//! handler sets `kvm_run.immediate_exit`, so a kick that lands just before
//! `KVM_RUN` still makes it return at once instead of being lost.

pub mod exit;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;

use kvm_bindings::KVM_EXIT_INTERNAL_ERROR;
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::devices::bus::Bus;
use crate::vm_exit::{ExitReason, ExitSignal};
use exit::{handle_exit, VcpuAction};

/// What ended a vCPU thread abnormally.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// `KVM_RUN` failed.
    #[error("vCPU {id}: KVM_RUN failed")]
    Run {
        /// The vCPU.
        id: u8,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest did something the VMM cannot continue from.
    #[error("vCPU {id}: {message}")]
    Guest {
        /// The vCPU.
        id: u8,
        /// What happened.
        message: String,
    },
    /// The thread could not be started.
    #[error("cannot start the thread for vCPU {id}")]
    Spawn {
        /// The vCPU.
        id: u8,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The state the host wants the vCPUs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// In the guest.
    Running,
    /// Parked outside the guest until resumed.
    Paused,
    /// Leaving the thread.
    Stopped,
}

/// Shared by the host and every vCPU thread.
#[derive(Debug)]
pub struct VcpuControl {
    state: Mutex<RunState>,
    changed: Condvar,
    halted: AtomicUsize,
    count: usize,
    /// Threads currently in their run loop; a thread leaves the list (under
    /// the lock) before it ends, so a kick never targets a dead thread.
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl VcpuControl {
    /// Control for `count` vCPUs, which start running.
    pub fn new(count: usize) -> Self {
        Self {
            state: Mutex::new(RunState::Running),
            changed: Condvar::new(),
            halted: AtomicUsize::new(0),
            count,
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Sets the wanted state and kicks every vCPU thread out of the guest
    /// so that it looks at the new state.
    pub fn set_state_and_kick(&self, state: RunState) {
        self.set_state(state);
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for &thread in threads.iter() {
            // SAFETY: every listed thread is alive: threads remove themselves
            // under this lock before they end.
            let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
            if rc != 0 {
                tracing::warn!(rc, "cannot kick a vCPU thread");
            }
        }
    }

    fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(me);
    }

    fn unregister_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.retain(|&t| t != me);
    }

    /// The wanted state.
    pub fn state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the wanted state and wakes parked threads. Threads in the guest
    /// must also be kicked ([`VcpuControl::set_state_and_kick`]).
    pub fn set_state(&self, state: RunState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.changed.notify_all();
    }

    /// Blocks while the state is `Paused`; returns the state that ended the
    /// wait.
    fn wait_while_paused(&self) -> RunState {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let guard = self
            .changed
            .wait_while(guard, |s| *s == RunState::Paused)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// Blocks until the state is `Stopped`.
    fn wait_for_stop(&self) {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        drop(
            self.changed
                .wait_while(guard, |s| *s != RunState::Stopped)
                .unwrap_or_else(|p| p.into_inner()),
        );
    }
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let flag = IMMEDIATE_EXIT.with(Cell::get);
    if !flag.is_null() {
        // SAFETY: the pointer was set by this thread to its own vCPU's
        // `kvm_run` mapping, which outlives the thread's run loop, and is
        // reset to null before the mapping goes away.
        unsafe { std::ptr::write_volatile(flag, 1) };
    }
}

/// The signal that kicks vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), kick_handler) {
            tracing::error!(error = %e, "cannot install the vCPU kick handler");
        }
    });
}

/// One vCPU, ready to run on its own thread.
pub struct Vcpu {
    /// Index and APIC ID.
    pub id: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// The port I/O bus.
    pub pio: Arc<Bus>,
    /// The MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where the VM's end is announced.
    pub exit: Arc<ExitSignal>,
    /// Host-side control.
    pub control: Arc<VcpuControl>,
}

impl Vcpu {
    /// Starts the vCPU's thread.
    pub fn spawn(self) -> Result<JoinHandle<Result<(), VcpuError>>, VcpuError> {
        install_kick_handler();
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run())
            .map_err(|source| VcpuError::Spawn { id, source })
    }

    fn run(mut self) -> Result<(), VcpuError> {
        let flag: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|cell| cell.set(flag));
        self.control.register_current_thread();
        let result = self.run_loop();
        self.control.unregister_current_thread();
        self.log_final_state();
        IMMEDIATE_EXIT.with(|cell| cell.set(std::ptr::null_mut()));
        if let Err(e) = &result {
            tracing::error!(error = %e, "vCPU failed");
            // A dead vCPU leaves a guest that cannot make progress.
            self.exit.request(ExitReason::Reset);
        }
        result
    }

    /// Where the vCPU was when it stopped: the first thing to look at when
    /// a guest hangs, and logged as a warning after a triple fault.
    fn log_final_state(&self) {
        if self.exit.reason() == Some(ExitReason::TripleFault) {
            match (self.fd.get_regs(), self.fd.get_sregs()) {
                (Ok(regs), Ok(sregs)) => tracing::warn!(
                    id = self.id,
                    rip = format_args!("{:#x}", regs.rip),
                    rsp = format_args!("{:#x}", regs.rsp),
                    rflags = format_args!("{:#x}", regs.rflags),
                    cr0 = format_args!("{:#x}", sregs.cr0),
                    cr2 = format_args!("{:#x}", sregs.cr2),
                    cr3 = format_args!("{:#x}", sregs.cr3),
                    cr4 = format_args!("{:#x}", sregs.cr4),
                    efer = format_args!("{:#x}", sregs.efer),
                    "vCPU triple-faulted"
                ),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(id = self.id, error = %e, "vCPU triple-faulted")
                }
            }
            return;
        }
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(regs), Ok(sregs)) => tracing::debug!(
                id = self.id,
                rip = format_args!("{:#x}", regs.rip),
                rsp = format_args!("{:#x}", regs.rsp),
                rcx = format_args!("{:#x}", regs.rcx),
                rsi = format_args!("{:#x}", regs.rsi),
                rdi = format_args!("{:#x}", regs.rdi),
                cr0 = format_args!("{:#x}", sregs.cr0),
                cr3 = format_args!("{:#x}", sregs.cr3),
                "vCPU stopped"
            ),
            (Err(e), _) | (_, Err(e)) => tracing::debug!(id = self.id, error = %e, "vCPU stopped"),
        }
    }

    /// Where the guest was and what KVM said, for a failure message.
    fn failure_detail(&mut self) -> String {
        let mut detail = match self.fd.get_regs() {
            Ok(regs) => format!(" at rip {:#x}", regs.rip),
            Err(_) => String::new(),
        };
        let run = self.fd.get_kvm_run();
        if run.exit_reason == KVM_EXIT_INTERNAL_ERROR {
            // SAFETY: for KVM_EXIT_INTERNAL_ERROR the kernel filled the
            // `internal` member of the exit union; every bit pattern is a
            // valid value of its plain integer fields.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let ndata = (internal.ndata as usize).min(internal.data.len());
            detail += &format!(
                " (suberror {}, data {:x?})",
                internal.suberror,
                &internal.data[..ndata]
            );
        }
        detail
    }

    fn run_loop(&mut self) -> Result<(), VcpuError> {
        loop {
            match self.control.state() {
                RunState::Stopped => return Ok(()),
                RunState::Paused => {
                    if self.control.wait_while_paused() == RunState::Stopped {
                        return Ok(());
                    }
                }
                RunState::Running => {}
            }
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(exit, &self.pio, &self.mmio),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    VcpuAction::Continue
                }
                Err(source) => {
                    return Err(VcpuError::Run {
                        id: self.id,
                        source,
                    })
                }
            };
            match action {
                VcpuAction::Continue => {}
                VcpuAction::Halt => {
                    tracing::debug!(
                        id = self.id,
                        "vCPU halted with no interrupt controller to wake it"
                    );
                    if self.control.halted.fetch_add(1, Ordering::SeqCst) + 1 == self.control.count
                    {
                        self.exit.request(ExitReason::Halted);
                    }
                    self.control.wait_for_stop();
                    return Ok(());
                }
                VcpuAction::Exit(reason) => {
                    self.exit.request(reason);
                    self.control.wait_for_stop();
                    return Ok(());
                }
                VcpuAction::Fail(message) => {
                    return Err(VcpuError::Guest {
                        id: self.id,
                        message: format!("{message}{}", self.failure_detail()),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn paused_threads_wait_until_stopped() {
        let control = Arc::new(VcpuControl::new(1));
        control.set_state(RunState::Paused);
        let waiter = {
            let control = control.clone();
            std::thread::spawn(move || control.wait_while_paused())
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());

        control.set_state(RunState::Stopped);

        assert_eq!(waiter.join().unwrap(), RunState::Stopped);
    }

    #[test]
    fn kick_handler_sets_this_threads_immediate_exit_flag() {
        let mut flag = 0u8;
        IMMEDIATE_EXIT.with(|cell| cell.set(&mut flag));

        kick_handler(0, std::ptr::null_mut(), std::ptr::null_mut());
        IMMEDIATE_EXIT.with(|cell| cell.set(std::ptr::null_mut()));

        assert_eq!(flag, 1);
    }
}
