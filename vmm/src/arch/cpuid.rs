//! CPUID for each vCPU: what KVM supports on this host, with the topology
//! and identity a guest must see (its own APIC ID, the number of logical
//! processors, "running under a hypervisor", KVM's signature).

use kvm_bindings::kvm_cpuid_entry2;

/// The KVM paravirtual signature in the hypervisor leaf ("KVMKVMKVM\0\0\0").
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// Leaf of the hypervisor signature.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;

const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const CPUID1_EDX_HTT: u32 = 1 << 28;

/// Adjusts KVM's supported CPUID for vCPU `apic_id` of `cpus`.
///
/// `tsc_deadline` says whether the in-kernel LAPIC emulates the TSC deadline
/// timer (only then may the guest be told about it).
pub fn adjust_cpuid(
    entries: &mut Vec<kvm_cpuid_entry2>,
    apic_id: u8,
    cpus: u8,
    tsc_deadline: bool,
) {
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(apic_id) << 24)
                    | (u32::from(cpus) << 16);
                entry.ecx |= CPUID1_ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= CPUID1_ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !CPUID1_ECX_TSC_DEADLINE;
                }
                if cpus > 1 {
                    entry.edx |= CPUID1_EDX_HTT;
                } else {
                    entry.edx &= !CPUID1_EDX_HTT;
                }
            }
            // Deterministic cache parameters: bits 26–31 of EAX are "cores per
            // package - 1"; we present every vCPU as one core of one package.
            4 => {
                entry.eax = (entry.eax & 0x03ff_ffff) | (u32::from(cpus.saturating_sub(1)) << 26);
            }
            // Extended topology (and its V2 leaf, which Linux prefers when
            // present): one thread per core, `cpus` cores.
            0xb | 0x1f => {
                entry.edx = u32::from(apic_id);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 0x100;
                    }
                    1 => {
                        entry.eax = 8 - cpus.saturating_sub(1).leading_zeros();
                        entry.ebx = u32::from(cpus);
                        entry.ecx = 0x200 | 1;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            // AMD: "number of physical cores - 1" and the APIC-ID bits per
            // package, so the guest's core count matches the MADT.
            0x8000_0008 => {
                let id_bits = 8 - cpus.saturating_sub(1).leading_zeros();
                entry.ecx = (id_bits << 12) | u32::from(cpus.saturating_sub(1));
            }
            // AMD extended APIC ID and core ID; one thread per core, node 0.
            0x8000_001e => {
                entry.eax = u32::from(apic_id);
                entry.ebx = u32::from(apic_id);
                entry.ecx = 0;
            }
            HYPERVISOR_LEAF => {
                entry.eax = entry.eax.max(HYPERVISOR_LEAF + 1);
                [entry.ebx, entry.ecx, entry.edx] = KVM_SIGNATURE;
            }
            _ => {}
        }
    }
    if !entries.iter().any(|e| e.function == HYPERVISOR_LEAF) {
        entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_LEAF,
            eax: HYPERVISOR_LEAF + 1,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xffff_ffff,
            ecx: CPUID1_ECX_TSC_DEADLINE,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf_1_reports_apic_id_count_and_hypervisor() {
        let mut entries = vec![leaf(1, 0)];

        adjust_cpuid(&mut entries, 3, 4, false);

        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0xffff);
        assert_ne!(l1.ecx & CPUID1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & CPUID1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & CPUID1_EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_carries_the_x2apic_id_on_every_level() {
        let mut entries = vec![leaf(0xb, 0), leaf(0xb, 1)];

        adjust_cpuid(&mut entries, 2, 4, true);

        assert_eq!(find(&entries, 0xb, 0).edx, 2);
        assert_eq!(find(&entries, 0xb, 1).edx, 2);
        assert_eq!(find(&entries, 0xb, 1).ebx, 4);
        assert_eq!(find(&entries, 0xb, 1).eax, 2);
    }

    #[test]
    fn v2_topology_leaf_is_adjusted_like_leaf_0xb() {
        let mut entries = vec![leaf(0x1f, 0), leaf(0x1f, 1), leaf(0x1f, 2)];

        adjust_cpuid(&mut entries, 1, 2, true);

        assert_eq!(find(&entries, 0x1f, 1).ebx, 2);
        assert_eq!(find(&entries, 0x1f, 2).ebx, 0);
        assert!(entries
            .iter()
            .filter(|e| e.function == 0x1f)
            .all(|e| e.edx == 1));
    }

    #[test]
    fn amd_topology_leaves_match_the_vcpu_count() {
        let mut entries = vec![leaf(0x8000_0008, 0), leaf(0x8000_001e, 0)];

        adjust_cpuid(&mut entries, 5, 6, false);

        let size = find(&entries, 0x8000_0008, 0).ecx;
        assert_eq!((size & 0xff, (size >> 12) & 0xf), (5, 3));
        let ids = find(&entries, 0x8000_001e, 0);
        assert_eq!((ids.eax, ids.ebx & 0xff, (ids.ebx >> 8) & 0xff), (5, 5, 0));
    }

    #[test]
    fn hypervisor_leaf_is_added_with_the_kvm_signature() {
        let mut entries = vec![leaf(1, 0)];

        adjust_cpuid(&mut entries, 0, 1, true);

        let hv = find(&entries, HYPERVISOR_LEAF, 0);
        let mut sig = Vec::new();
        for reg in [hv.ebx, hv.ecx, hv.edx] {
            sig.extend_from_slice(&reg.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
        assert_ne!(find(&entries, 1, 0).ecx & CPUID1_ECX_TSC_DEADLINE, 0);
    }
}
