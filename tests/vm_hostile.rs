//! Hostile inputs that only the utility VM has: idle clients on the hybrid
//! vsock socket, and the VM's own disk as seen from a distro's root.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::vm::TestVm;
use common::{debian_rootfs, text, Cli};

#[test]
fn vm_idle_vsock_clients_without_connect_neither_lock_out_commands_nor_stay() {
    let vm = TestVm::new("");
    vm.ok(&["list"]);
    let socket = vm.runtime_dir().join("vsock.sock");
    let mut idle: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();

    let started = Instant::now();
    let list = vm.run(&["list"]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(7));
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    let oldest = idle[0].read(&mut buf);
    let last = idle.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let newest = last.read(&mut buf);

    assert!(
        list.status.success(),
        "list failed next to 300 idle clients: {}",
        text(&list.stderr)
    );
    assert!(took < Duration::from_secs(10), "list took {took:?}");
    assert_eq!(oldest.unwrap(), 0, "the oldest idle client was closed");
    assert_eq!(
        newest.unwrap(),
        0,
        "a silent client was closed after the timeout"
    );
}

#[test]
fn vm_distro_root_cannot_read_the_data_disk_and_pid1_is_plain_init() {
    let vm = TestVm::new("");
    let tar = debian_rootfs().to_str().unwrap();
    vm.ok(&["import", "rawdisk", tar]);
    vm.ok(&["import", "victim", tar]);
    vm.sh("victim", "echo mine > /root/secret");

    let out = vm.run(&[
        "exec",
        "rawdisk",
        "--",
        "sh",
        "-c",
        "dev=$(cat /sys/block/vda/dev); mknod /root/vda b ${dev%:*} ${dev#*:} \
         && head -c 4096 /root/vda | wc -c",
    ]);
    let cmdline = vm.sh("rawdisk", "tr '\\0' ' ' < /proc/1/cmdline");

    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "the data disk was readable: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(cmdline.trim(), "init");
    assert_eq!(vm.sh("victim", "cat /root/secret"), "mine\n");
}
