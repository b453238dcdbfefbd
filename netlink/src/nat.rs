//! Source NAT for the VM's private ranges: one nftables batch that
//! (re)creates table `ip distroctl` with a `nat` chain on postrouting and a
//! single rule, "source address in PREFIX: masquerade". Traffic from a
//! distro with its own network namespace then leaves the VM under the VM's
//! address, which is the only one passt serves.
//!
//! The batch adds the table, deletes it and adds it again, so running it
//! twice leaves exactly one rule (the kernel applies a batch atomically).

use std::net::Ipv4Addr;

use crate::message::{Message, Socket};
use crate::NetlinkError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;

const NF_INET_POST_ROUTING: u32 = 4;
const NF_ACCEPT: u32 = 1;
/// `srcnat` priority.
const NAT_PRIORITY: u32 = 100;
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
/// Offset of the source address in the IPv4 header.
const IPV4_SADDR_OFFSET: u32 = 12;

const TABLE: &str = "distroctl";
const CHAIN: &str = "postrouting";

/// A private range whose traffic is masqueraded: the first `octets` bytes
/// of `prefix` (whole bytes keep the rule a plain compare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqueradeRange {
    /// Network address.
    pub prefix: Ipv4Addr,
    /// Prefix length in whole bytes (1 to 4).
    pub octets: u8,
}

/// Installs (or reinstalls) the masquerade rule for `range` in the calling
/// thread's network namespace. Needs the `nft_chain_nat` and `nft_masq`
/// modules (loaded by the VM's init).
pub fn masquerade(range: MasqueradeRange) -> Result<(), NetlinkError> {
    let socket = Socket::open(libc::NETLINK_NETFILTER)?;
    // Table, delete, table, chain, rule: five acknowledgements.
    socket.transact(&batch(range), 5, "install the NAT rule")
}

/// `nfgenmsg`: family, version 0, resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let id = res_id.to_be_bytes();
    [family, 0, id[0], id[1]]
}

fn nft(kind: u16, flags: u16) -> Message {
    let flags = flags | libc::NLM_F_ACK as u16;
    Message::new(
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        flags,
        &nfgenmsg(NFPROTO_IPV4, 0),
    )
}

fn be(value: u32) -> [u8; 4] {
    value.to_be_bytes()
}

/// The whole batch, ready to send.
fn batch(range: MasqueradeRange) -> Vec<u8> {
    let create = libc::NLM_F_CREATE as u16;
    let boundary = |kind| {
        Message::new(
            kind,
            0,
            &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES),
        )
        .finish()
    };
    let table = || {
        nft(NFT_MSG_NEWTABLE, create)
            .string(NFTA_TABLE_NAME, TABLE)
            .finish()
    };
    let delete = nft(NFT_MSG_DELTABLE, 0)
        .string(NFTA_TABLE_NAME, TABLE)
        .finish();
    let chain = nft(NFT_MSG_NEWCHAIN, create)
        .string(NFTA_CHAIN_TABLE, TABLE)
        .string(NFTA_CHAIN_NAME, CHAIN)
        .begin(NFTA_CHAIN_HOOK)
        .attribute(NFTA_HOOK_HOOKNUM, &be(NF_INET_POST_ROUTING))
        .attribute(NFTA_HOOK_PRIORITY, &be(NAT_PRIORITY))
        .end()
        .attribute(NFTA_CHAIN_POLICY, &be(NF_ACCEPT))
        .string(NFTA_CHAIN_TYPE, "nat")
        .finish();
    let octets = usize::from(range.octets.clamp(1, 4));
    let rule = nft(NFT_MSG_NEWRULE, create | libc::NLM_F_APPEND as u16)
        .string(NFTA_RULE_TABLE, TABLE)
        .string(NFTA_RULE_CHAIN, CHAIN)
        .begin(NFTA_RULE_EXPRESSIONS)
        // Load the first `octets` bytes of the source address...
        .begin(NFTA_LIST_ELEM)
        .string(NFTA_EXPR_NAME, "payload")
        .begin(NFTA_EXPR_DATA)
        .attribute(NFTA_PAYLOAD_DREG, &be(NFT_REG_1))
        .attribute(NFTA_PAYLOAD_BASE, &be(NFT_PAYLOAD_NETWORK_HEADER))
        .attribute(NFTA_PAYLOAD_OFFSET, &be(IPV4_SADDR_OFFSET))
        .attribute(NFTA_PAYLOAD_LEN, &be(octets as u32))
        .end()
        .end()
        // ...compare them with the range...
        .begin(NFTA_LIST_ELEM)
        .string(NFTA_EXPR_NAME, "cmp")
        .begin(NFTA_EXPR_DATA)
        .attribute(NFTA_CMP_SREG, &be(NFT_REG_1))
        .attribute(NFTA_CMP_OP, &be(NFT_CMP_EQ))
        .begin(NFTA_CMP_DATA)
        .attribute(NFTA_DATA_VALUE, &range.prefix.octets()[..octets])
        .end()
        .end()
        .end()
        // ...and masquerade what matches.
        .begin(NFTA_LIST_ELEM)
        .string(NFTA_EXPR_NAME, "masq")
        .end()
        .end()
        .finish();
    [
        boundary(NFNL_MSG_BATCH_BEGIN),
        table(),
        delete,
        table(),
        chain,
        rule,
        boundary(NFNL_MSG_BATCH_END),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a batch into its messages' (type, flags).
    fn kinds(batch: &[u8]) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        let mut rest = batch;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            out.push((
                u16::from_ne_bytes([rest[4], rest[5]]),
                u16::from_ne_bytes([rest[6], rest[7]]),
            ));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn batch_rebuilds_the_table_between_begin_and_end() {
        let range = MasqueradeRange {
            prefix: Ipv4Addr::new(172, 31, 0, 0),
            octets: 2,
        };

        let got = kinds(&batch(range));

        let types: Vec<u16> = got.iter().map(|(t, _)| *t).collect();
        let sub = NFNL_SUBSYS_NFTABLES << 8;
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                sub | NFT_MSG_NEWTABLE,
                sub | NFT_MSG_DELTABLE,
                sub | NFT_MSG_NEWTABLE,
                sub | NFT_MSG_NEWCHAIN,
                sub | NFT_MSG_NEWRULE,
                NFNL_MSG_BATCH_END,
            ]
        );
        // Exactly the five nftables messages ask for an acknowledgement.
        let acked = got
            .iter()
            .filter(|(_, f)| f & libc::NLM_F_ACK as u16 != 0)
            .count();
        assert_eq!(acked, 5);
    }

    #[test]
    fn rule_compares_the_source_prefix_bytes() {
        let range = MasqueradeRange {
            prefix: Ipv4Addr::new(172, 31, 0, 0),
            octets: 2,
        };

        let bytes = batch(range);

        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("payload\0") && text.contains("cmp\0") && text.contains("masq\0"));
        // NFTA_DATA_VALUE holding 172.31: len 6, type 1, the two bytes.
        let value = [6u8, 0, 1, 0, 172, 31];
        assert!(bytes.windows(6).any(|w| w == value));
    }
}
