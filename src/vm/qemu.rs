//! The QEMU command line for the utility VM: `-M microvm` with ACPI (so
//! Debian's kernel finds the virtio-mmio devices through the DSDT), shared
//! memfd guest memory (required by the vhost-user vsock backend), the data
//! disk on virtio-blk, our vsock device over vhost-user, and the serial
//! console in a log file.

use std::ffi::OsString;
use std::path::PathBuf;

use super::passt::GuestNetwork;

/// Guest CID of the utility VM (set by our vsock backend, not by QEMU).
pub const GUEST_CID: u64 = 3;

/// Kernel command line. `panic=-1` turns a guest panic into a reset, which
/// `-no-reboot` turns into QEMU exiting, so a dead guest never hangs;
/// `pci=off` because microvm has no PCI bus.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet loglevel=4 pci=off";

/// Everything the command line is made from.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    /// `qemu-system-x86_64`, or a path to it.
    pub binary: PathBuf,
    /// Use KVM (else TCG).
    pub kvm: bool,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Data disk image.
    pub disk: PathBuf,
    /// vhost-user socket our vsock backend listens on.
    pub vhost_socket: PathBuf,
    /// Serial console log.
    pub console_log: PathBuf,
    /// Host TSC frequency, handed to a TCG guest (see [`super::accel::tsc_khz`]).
    pub tsc_khz: Option<u64>,
    /// passt's socket and the guest network it serves; no network device
    /// when absent.
    pub network: Option<(PathBuf, GuestNetwork)>,
    /// Host shares and the vhost-user sockets of their virtiofsd.
    pub shares: Vec<(super::shares::Share, PathBuf)>,
}

impl QemuSpec {
    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(s.into());
        push("-M".into());
        push("microvm,acpi=on,memory-backend=mem".into());
        if self.kvm {
            push("-accel".into());
            push("kvm".into());
            push("-cpu".into());
            push("host".into());
        } else {
            push("-accel".into());
            push(format!("tcg,thread=multi,tb-size={TCG_TB_SIZE_MIB}"));
            push("-cpu".into());
            push("max".into());
        }
        push("-m".into());
        push(format!("{}M", self.memory_mib));
        push("-smp".into());
        push(self.cpus.to_string());
        push("-object".into());
        push(format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            self.memory_mib
        ));
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            push(flag.into());
        }
        push("-kernel".into());
        push(self.kernel.display().to_string());
        push("-initrd".into());
        push(self.initrd.display().to_string());
        push("-append".into());
        let mut cmdline = KERNEL_CMDLINE.to_string();
        if let Some(khz) = self.tsc_khz.filter(|_| !self.kvm) {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        cmdline.push_str(&guest_kernel_args(
            self.network.as_ref().map(|(_, n)| n),
            self.shares.iter().map(|(share, _)| share),
        ));
        push(cmdline);
        push("-chardev".into());
        push(format!(
            "file,id=console,path={}",
            escape(&self.console_log)
        ));
        push("-serial".into());
        push("chardev:console".into());
        push("-drive".into());
        push(format!(
            "id=data,file={},format=raw,if=none,discard=unmap,detect-zeroes=unmap,cache=writeback",
            escape(&self.disk)
        ));
        push("-device".into());
        push("virtio-blk-device,drive=data".into());
        push("-chardev".into());
        push(format!(
            "socket,id=vsock,path={}",
            escape(&self.vhost_socket)
        ));
        push("-device".into());
        push("vhost-user-vsock-device,chardev=vsock".into());
        // The guest reports free memory and QEMU drops it (a hole punched in
        // the shared memfd); the balloon's target stays at zero.
        push("-device".into());
        push("virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on".into());
        if let Some((socket, _)) = &self.network {
            push("-netdev".into());
            push(format!(
                "stream,id=net,server=off,addr.type=unix,addr.path={}",
                escape(socket)
            ));
            push("-device".into());
            push("virtio-net-device,netdev=net".into());
        }
        for (share, socket) in &self.shares {
            push("-chardev".into());
            push(format!("socket,id={},path={}", share.tag, escape(socket)));
            push("-device".into());
            push(format!(
                "vhost-user-fs-device,chardev={tag},tag={tag},queue-size=1024",
                tag = share.tag
            ));
        }
        a
    }
}

/// The kernel command line words both monitors append for the guest, each
/// with a leading space: the network's addresses for init, then each host
/// share for the agent.
pub fn guest_kernel_args<'a>(
    network: Option<&GuestNetwork>,
    shares: impl IntoIterator<Item = &'a super::shares::Share>,
) -> String {
    let mut words = String::new();
    if let Some(network) = network {
        words.push(' ');
        words.push_str(&network.kernel_args());
    }
    for share in shares {
        words.push(' ');
        words.push_str(&share.kernel_arg());
    }
    words
}

/// TCG's translation cache in MiB. QEMU 7.2 sizes it at 1 GiB by default
/// and, with our long-running VM, it fills toward that: a fallback VM would
/// cost a gigabyte of host memory besides guest RAM. A boot and a day of
/// shells translate far less than this; when it fills, QEMU flushes it
/// and retranslates what is hot again.
pub const TCG_TB_SIZE_MIB: u32 = 256;

/// QEMU option values separate fields with commas; a literal comma is
/// written twice.
fn escape(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kvm: bool) -> QemuSpec {
        QemuSpec {
            binary: "qemu-system-x86_64".into(),
            kvm,
            memory_mib: 2048,
            cpus: 2,
            kernel: "/k/vmlinuz".into(),
            initrd: "/c/initramfs.cpio".into(),
            disk: "/d/da,ta.img".into(),
            vhost_socket: "/r/vhost.sock".into(),
            console_log: "/d/console.log".into(),
            tsc_khz: Some(2_600_000),
            network: Some(("/r/net.sock".into(), GuestNetwork::default())),
            shares: vec![(
                super::super::shares::Share {
                    tag: "share0".into(),
                    host: "/home/a".into(),
                    guest: "/home/a".into(),
                    read_only: true,
                },
                "/r/share0.sock".into(),
            )],
        }
    }

    fn joined(s: &QemuSpec) -> String {
        s.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn memory_is_shared_memfd_of_the_configured_size() {
        let args = joined(&spec(false));

        assert!(args.contains("-m 2048M"));
        assert!(args.contains("memory-backend-memfd,id=mem,size=2048M,share=on"));
        assert!(args.contains("microvm,acpi=on,memory-backend=mem"));
    }

    #[test]
    fn accelerator_follows_the_host() {
        assert!(joined(&spec(true)).contains("-accel kvm -cpu host"));
        assert!(joined(&spec(false)).contains("-accel tcg,thread=multi,tb-size=256 "));
    }

    #[test]
    fn tsc_frequency_is_passed_only_to_emulated_guests() {
        assert!(joined(&spec(false)).contains("pci=off tsc_early_khz=2600000"));
        assert!(!joined(&spec(true)).contains("tsc_early_khz"));
    }

    #[test]
    fn devices_are_attached_and_commas_escaped() {
        let args = joined(&spec(false));

        assert!(args.contains("file=/d/da,,ta.img,format=raw"));
        assert!(args.contains("vhost-user-vsock-device,chardev=vsock"));
        assert!(args.contains("-serial chardev:console"));
        assert!(
            args.contains("-device virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on")
        );
    }

    #[test]
    fn network_device_connects_to_passt_and_init_learns_the_addresses() {
        let args = joined(&spec(false));

        assert!(
            args.contains("-netdev stream,id=net,server=off,addr.type=unix,addr.path=/r/net.sock")
        );
        assert!(args.contains("-device virtio-net-device,netdev=net"));
        assert!(args.contains("distroctl.ip=10.0.2.15/24 distroctl.gw=10.0.2.2"));
    }

    #[test]
    fn each_share_is_a_vhost_user_fs_device_and_a_kernel_argument() {
        let args = joined(&spec(false));

        assert!(args.contains("-chardev socket,id=share0,path=/r/share0.sock"));
        assert!(
            args.contains("-device vhost-user-fs-device,chardev=share0,tag=share0,queue-size=1024")
        );
        assert!(args.contains("distroctl.share=share0,ro,2f686f6d652f61"));
    }
}
