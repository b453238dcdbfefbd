//! Source NAT for the VM's private ranges: one nftables batch that
//! (re)creates table `ip distroctl` with a `nat` chain on postrouting and a
//! single rule, "source address in PREFIX: masquerade". Traffic from a
//! distro with its own network namespace then leaves the VM under the VM's
//! address, which is the only one passt serves.
//!
//! A second chain, on prerouting before connection tracking, drops TCP
//! segments that carry none of SYN, ACK, RST and FIN. Such a segment is
//! never valid; passt sends one now and then as a window update. Connection
//! tracking calls it invalid and does not translate it back, so the VM's
//! own stack would answer it with a reset for the masqueraded port and
//! kill the distro's connection.
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
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// `srcnat` priority.
const NAT_PRIORITY: i32 = 100;
/// `raw` priority: before connection tracking.
const RAW_PRIORITY: i32 = -300;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: u32 = 13;
/// FIN, SYN, RST and ACK.
const TCP_FIN_SYN_RST_ACK: u8 = 0x17;
const NFT_CMP_EQ: u32 = 0;
/// Offset of the source address in the IPv4 header.
const IPV4_SADDR_OFFSET: u32 = 12;

const TABLE: &str = "distroctl";
const NAT_CHAIN: &str = "postrouting";
const FILTER_CHAIN: &str = "prerouting";

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
    let socket = Socket::open(libc::NETLINK_NETFILTER).map_err(NetlinkError::Socket)?;
    // Table, delete, table, two chains, two rules.
    socket.transact(&batch(range), 7, "install the NAT rule")
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

fn chain(name: &str, kind: &str, hook: u32, priority: i32) -> Vec<u8> {
    nft(NFT_MSG_NEWCHAIN, libc::NLM_F_CREATE as u16)
        .string(NFTA_CHAIN_TABLE, TABLE)
        .string(NFTA_CHAIN_NAME, name)
        .begin(NFTA_CHAIN_HOOK)
        .attribute(NFTA_HOOK_HOOKNUM, &be(hook))
        .attribute(NFTA_HOOK_PRIORITY, &priority.to_be_bytes())
        .end()
        .attribute(NFTA_CHAIN_POLICY, &be(NF_ACCEPT))
        .string(NFTA_CHAIN_TYPE, kind)
        .finish()
}

/// A rule in `chain`; `expressions` adds the list elements.
fn rule(chain: &str, expressions: impl FnOnce(Message) -> Message) -> Vec<u8> {
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16;
    let msg = nft(NFT_MSG_NEWRULE, flags)
        .string(NFTA_RULE_TABLE, TABLE)
        .string(NFTA_RULE_CHAIN, chain)
        .begin(NFTA_RULE_EXPRESSIONS);
    expressions(msg).end().finish()
}

/// One expression: `name` with the attributes `data` adds (none for `None`).
fn expression(msg: Message, name: &str, data: Option<&dyn Fn(Message) -> Message>) -> Message {
    let msg = msg.begin(NFTA_LIST_ELEM).string(NFTA_EXPR_NAME, name);
    match data {
        Some(data) => data(msg.begin(NFTA_EXPR_DATA)).end().end(),
        None => msg.end(),
    }
}

/// Loads `len` bytes at `offset` of header `base` into register 1.
fn payload(msg: Message, base: u32, offset: u32, len: u32) -> Message {
    expression(
        msg,
        "payload",
        Some(&|m: Message| {
            m.attribute(NFTA_PAYLOAD_DREG, &be(NFT_REG_1))
                .attribute(NFTA_PAYLOAD_BASE, &be(base))
                .attribute(NFTA_PAYLOAD_OFFSET, &be(offset))
                .attribute(NFTA_PAYLOAD_LEN, &be(len))
        }),
    )
}

/// Continues only when register 1 equals `value`.
fn equals(msg: Message, value: &[u8]) -> Message {
    expression(
        msg,
        "cmp",
        Some(&|m: Message| {
            m.attribute(NFTA_CMP_SREG, &be(NFT_REG_1))
                .attribute(NFTA_CMP_OP, &be(NFT_CMP_EQ))
                .begin(NFTA_CMP_DATA)
                .attribute(NFTA_DATA_VALUE, value)
                .end()
        }),
    )
}

/// The whole batch, ready to send.
fn batch(range: MasqueradeRange) -> Vec<u8> {
    let boundary = |kind| {
        Message::new(
            kind,
            0,
            &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES),
        )
        .finish()
    };
    let table = || {
        nft(NFT_MSG_NEWTABLE, libc::NLM_F_CREATE as u16)
            .string(NFTA_TABLE_NAME, TABLE)
            .finish()
    };
    let delete = nft(NFT_MSG_DELTABLE, 0)
        .string(NFTA_TABLE_NAME, TABLE)
        .finish();
    let octets = usize::from(range.octets.clamp(1, 4));
    let masquerade = rule(NAT_CHAIN, |m| {
        let m = payload(
            m,
            NFT_PAYLOAD_NETWORK_HEADER,
            IPV4_SADDR_OFFSET,
            octets as u32,
        );
        let m = equals(m, &range.prefix.octets()[..octets]);
        expression(m, "masq", None)
    });
    let drop_flagless = rule(FILTER_CHAIN, |m| {
        let m = expression(
            m,
            "meta",
            Some(&|d: Message| {
                d.attribute(NFTA_META_DREG, &be(NFT_REG_1))
                    .attribute(NFTA_META_KEY, &be(NFT_META_L4PROTO))
            }),
        );
        let m = equals(m, &[libc::IPPROTO_TCP as u8]);
        let m = payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, TCP_FLAGS_OFFSET, 1);
        let m = expression(
            m,
            "bitwise",
            Some(&|d: Message| {
                d.attribute(NFTA_BITWISE_SREG, &be(NFT_REG_1))
                    .attribute(NFTA_BITWISE_DREG, &be(NFT_REG_1))
                    .attribute(NFTA_BITWISE_LEN, &be(1))
                    .begin(NFTA_BITWISE_MASK)
                    .attribute(NFTA_DATA_VALUE, &[TCP_FIN_SYN_RST_ACK])
                    .end()
                    .begin(NFTA_BITWISE_XOR)
                    .attribute(NFTA_DATA_VALUE, &[0])
                    .end()
            }),
        );
        let m = equals(m, &[0]);
        expression(
            m,
            "immediate",
            Some(&|d: Message| {
                d.attribute(NFTA_IMMEDIATE_DREG, &be(NFT_REG_VERDICT))
                    .begin(NFTA_IMMEDIATE_DATA)
                    .begin(NFTA_DATA_VERDICT)
                    .attribute(NFTA_VERDICT_CODE, &be(NF_DROP))
                    .end()
                    .end()
            }),
        )
    });
    [
        boundary(NFNL_MSG_BATCH_BEGIN),
        table(),
        delete,
        table(),
        chain(NAT_CHAIN, "nat", NF_INET_POST_ROUTING, NAT_PRIORITY),
        masquerade,
        chain(FILTER_CHAIN, "filter", NF_INET_PRE_ROUTING, RAW_PRIORITY),
        drop_flagless,
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
    fn batch_rebuilds_the_table_with_both_chains_between_begin_and_end() {
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
                sub | NFT_MSG_NEWCHAIN,
                sub | NFT_MSG_NEWRULE,
                NFNL_MSG_BATCH_END,
            ]
        );
        // Exactly the seven nftables messages ask for an acknowledgement.
        let acked = got
            .iter()
            .filter(|(_, f)| f & libc::NLM_F_ACK as u16 != 0)
            .count();
        assert_eq!(acked, 7);
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
