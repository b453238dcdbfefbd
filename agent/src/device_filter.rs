//! The device filter of a distro's cgroup: a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program, as container runtimes attach one, so that root in a distro can
//! create device nodes but open only the usual container devices — never
//! the VM's disks (where every other distro's files live), memory or
//! consoles.
//!
//! The program is a handful of instructions written out here: it loads the
//! device type, major, minor and access from its context and returns 1
//! (allow) for a plain `mknod` or a device on [`ALLOWED`], 0 otherwise.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use thiserror::Error;

/// `BPF_PROG_LOAD` and `BPF_PROG_ATTACH` from `linux/bpf.h`.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` attach type.
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: programs attached below this one (a container
/// runtime's, inside a distro) run *in addition* to it, so they can only
/// refuse more, never allow what this one refuses.
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// `BPF_DEVCG_DEV_CHAR` (and `_BLOCK` = 1).
const DEV_CHAR: i32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`.
const ACC_MKNOD: i32 = 1;

/// Instruction classes and fields (`linux/bpf_common.h`, `linux/bpf.h`).
const LDX_MEM_W: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const MOV64_K: u8 = 0xb7;
const MOV64_X: u8 = 0xbf;
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

/// Character devices a distro may open: `(major, minor)`, `None` for any
/// minor. The set runc and youki allow by default.
pub const ALLOWED: [(u32, Option<u32>); 11] = [
    (1, Some(3)),    // null
    (1, Some(5)),    // zero
    (1, Some(7)),    // full
    (1, Some(8)),    // random
    (1, Some(9)),    // urandom
    (5, Some(0)),    // tty
    (5, Some(1)),    // console
    (5, Some(2)),    // ptmx
    (136, None),     // pts/*
    (10, Some(229)), // fuse
    (10, Some(200)), // net/tun
];

/// Installing the filter failed.
#[derive(Debug, Error)]
pub enum DeviceFilterError {
    /// The kernel refused the program (no BPF, or no cgroup device hook).
    #[error("could not load the device filter program")]
    Load(#[source] io::Error),
    /// Opening the cgroup directory failed.
    #[error("could not open cgroup {0}")]
    OpenGroup(String, #[source] io::Error),
    /// Attaching the program to the cgroup failed.
    #[error("could not attach the device filter to cgroup {0}")]
    Attach(String, #[source] io::Error),
}

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The filter program for `allowed`.
fn program(allowed: &[(u32, Option<u32>)]) -> Vec<Insn> {
    // r1 = &bpf_cgroup_dev_ctx { access_type, major, minor }
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),        // r2 = access_type
        insn(MOV64_X, 3, 2, 0, 0),          // r3 = r2
        insn(ALU64_RSH_K, 3, 0, 0, 16),     // r3 = access (mknod/read/write bits)
        insn(ALU64_AND_K, 2, 0, 0, 0xffff), // r2 = device type
        insn(LDX_MEM_W, 4, 1, 4, 0),        // r4 = major
        insn(LDX_MEM_W, 5, 1, 8, 0),        // r5 = minor
        // Creating a node is harmless; opening it is what is checked.
        insn(JNE_K, 3, 0, 2, ACC_MKNOD),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ];
    for &(major, minor) in allowed {
        let checks: i16 = if minor.is_some() { 3 } else { 2 };
        // Each failed check jumps past the rest of this rule.
        p.push(insn(JNE_K, 2, 0, checks + 1, DEV_CHAR));
        p.push(insn(JNE_K, 4, 0, checks, major as i32));
        if let Some(minor) = minor {
            p.push(insn(JNE_K, 5, 0, 2, minor as i32));
        }
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, zero-padded: the kernel
/// takes a shorter attribute as long as what it does not know is zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, properly sized #[repr(C)] prefix of
    // `union bpf_attr` for `cmd`; the kernel reads (and may write) at most
    // `size_of::<T>()` bytes of it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn load(program: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"distrodev");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the device filter to the cgroup directory `group`, for it and
/// every group below it. Attach it to a group the distro cannot open (the
/// parent of its cgroup-namespace root): root in the distro could detach a
/// filter from a group it can open.
pub fn attach(group: &Path) -> Result<(), DeviceFilterError> {
    let prog = load(&program(&ALLOWED)).map_err(DeviceFilterError::Load)?;
    let name = group.display().to_string();
    let dir = File::open(group).map_err(|e| DeviceFilterError::OpenGroup(name.clone(), e))?;
    let mut attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // The attachment keeps the program alive; our descriptors may close.
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| DeviceFilterError::Attach(name, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one context, as the kernel would.
    fn run(p: &[Insn], access_type: u32, major: u32, minor: u32) -> i64 {
        let ctx = [access_type as i64, major as i64, minor as i64];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = ctx[(i.off / 4) as usize];
                }
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = i64::from(i.imm),
                ALU64_RSH_K => r[dst] = ((r[dst] as u64) >> i.imm) as i64,
                ALU64_AND_K => r[dst] &= i64::from(i.imm),
                JNE_K => {
                    if r[dst] != i64::from(i.imm) {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const READ: u32 = 2 << 16;
    const WRITE: u32 = 4 << 16;
    const MKNOD: u32 = 1 << 16;
    const BLOCK: u32 = 1;
    const CHAR: u32 = 2;

    #[test]
    fn usual_devices_open_disks_and_memory_do_not() {
        let p = program(&ALLOWED);

        assert_eq!(run(&p, CHAR | READ | WRITE, 1, 3), 1, "null");
        assert_eq!(run(&p, CHAR | READ, 1, 9), 1, "urandom");
        assert_eq!(run(&p, CHAR | READ | WRITE, 136, 42), 1, "pts/42");
        assert_eq!(run(&p, CHAR | READ | WRITE, 10, 200), 1, "tun");
        assert_eq!(run(&p, BLOCK | READ, 254, 0), 0, "vda");
        assert_eq!(
            run(&p, BLOCK | READ, 1, 3),
            0,
            "a block device 1:3 is not null"
        );
        assert_eq!(run(&p, CHAR | READ, 1, 1), 0, "mem");
        assert_eq!(run(&p, CHAR | WRITE, 4, 1), 0, "tty1");
        assert_eq!(run(&p, CHAR | READ, 10, 232), 0, "kvm");
    }

    #[test]
    fn mknod_alone_is_allowed_for_any_device() {
        let p = program(&ALLOWED);

        assert_eq!(run(&p, BLOCK | MKNOD, 254, 0), 1);
        assert_eq!(run(&p, BLOCK | MKNOD | READ, 254, 0), 0);
    }

    #[test]
    fn instruction_encoding_puts_dst_in_the_low_nibble() {
        let i = insn(LDX_MEM_W, 2, 1, 4, 0);

        assert_eq!(i.regs, 0x12);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn kernel_accepts_the_program_and_groups_below_may_add_their_own() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: loading BPF programs needs root");
            return;
        }
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| {
                nix::sys::statfs::statfs(*p).is_ok_and(|s| s.filesystem_type().0 == 0x6367_7270)
            });
        let Some(root) = root else {
            eprintln!("SKIP: no cgroup2 hierarchy on this host");
            return;
        };
        let group = root.join(format!("distroctl-filter-test-{}", std::process::id()));
        let child = group.join("nested");
        std::fs::create_dir(&group).unwrap();
        std::fs::create_dir(&child).unwrap();

        let attached = attach(&group);
        // A runtime inside the distro filtering its containers' devices.
        let nested = attach(&child);
        std::fs::remove_dir(&child).unwrap();
        std::fs::remove_dir(&group).unwrap();

        attached.unwrap();
        nested.unwrap();
    }
}
