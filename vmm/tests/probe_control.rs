//! Pausing, resuming and stopping a running guest from the host: a probe
//! that only counts in memory (no exits of its own) is kicked out of
//! `KVM_RUN` by the VMM's signal.

mod probe_guest;

use std::time::{Duration, Instant};

use probe_guest::{bzimage, kvm_unavailable, probe_config, write_file, Probe};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

const COUNTER: u64 = 0x20_0000;

fn counting_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::new();
    p.asm.mov(rbx, COUNTER).unwrap();
    let mut spin = p.asm.create_label();
    p.asm.set_label(&mut spin).unwrap();
    p.asm.inc(qword_ptr(rbx)).unwrap();
    p.asm.jmp(spin).unwrap();
    p.finish()
}

fn counter(mem: &GuestMemoryMmap) -> u64 {
    mem.read_obj(GuestAddress(COUNTER)).unwrap()
}

fn wait_until_above(mem: &GuestMemoryMmap, value: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = counter(mem);
        if now > value {
            return now;
        }
        assert!(Instant::now() < deadline, "the guest is not counting");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn probe_pause_holds_the_guest_until_resumed_and_stop_ends_it() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "probe.bzImage", &bzimage(&counting_probe()));
    let mut config = probe_config(dir.path(), kernel, None, "console=ttyS0");
    config.cpus = 2;
    let vm = Vm::new(config).unwrap();
    let mem = vm.memory().clone();
    let handle = vm.handle();
    let running = std::thread::spawn(move || vm.run());
    wait_until_above(&mem, 1000);

    handle.pause();
    std::thread::sleep(Duration::from_millis(50));
    let paused_at = counter(&mem);
    std::thread::sleep(Duration::from_millis(200));

    assert_eq!(counter(&mem), paused_at, "the guest ran while paused");
    handle.resume();
    wait_until_above(&mem, paused_at);
    handle.stop();
    assert_eq!(running.join().unwrap().unwrap(), ExitReason::Stopped);
}
