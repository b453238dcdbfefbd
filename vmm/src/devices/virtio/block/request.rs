//! A virtio-blk request parsed from its descriptor chain.
//!
//! [`parse_request`] is a pure function of the chain's descriptors, guest
//! memory (for the header and range lists) and the disk's limits: it checks
//! everything the guest controls (directions, lengths, sector ranges,
//! overflow) so the device only executes requests that fit the disk.
//!
//! Layout (virtio 1.2, 5.2.6): a 16-byte device-readable header
//! (`type`, reserved, `sector`), the data, and a device-writable status byte
//! at the very end. With `VIRTIO_F_VERSION_1` the driver may split or merge
//! these across descriptors however it likes, so the parser works on byte
//! ranges, not on descriptor counts.

use vm_memory::{Address, Bytes, GuestAddress};

use super::defs::{
    RANGE_ENTRY_SIZE, REQUEST_HEADER_SIZE, REQ_DISCARD, REQ_FLUSH, REQ_GET_ID, REQ_IN, REQ_OUT,
    REQ_WRITE_ZEROES, SECTOR_SHIFT, SECTOR_SIZE, STATUS_IOERR, STATUS_UNSUPP,
    WRITE_ZEROES_FLAG_UNMAP,
};

/// One descriptor's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device may write it (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

impl Segment {
    /// The part of the segment after its first `n` bytes, if any is left.
    fn skip(self, n: u32) -> Option<Segment> {
        let len = self.len.checked_sub(n).filter(|&len| len > 0)?;
        Some(Segment {
            addr: self.addr.checked_add(u64::from(n))?,
            len,
            writable: self.writable,
        })
    }
}

/// What the parser must know about the disk and the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLimits {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Writes of any kind fail.
    pub read_only: bool,
    /// `VIRTIO_BLK_F_DISCARD` was negotiated.
    pub discard: bool,
    /// `VIRTIO_BLK_F_WRITE_ZEROES` was negotiated.
    pub write_zeroes: bool,
    /// Most sectors in one discard or write-zeroes range.
    pub max_range_sectors: u32,
    /// Most ranges in one discard or write-zeroes request.
    pub max_ranges: u32,
}

/// A sector range of a discard or write-zeroes request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
}

/// What a request asks for, checked against the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read from `sector` into the (device-writable) buffers.
    Read {
        /// First sector.
        sector: u64,
        /// Where the data goes, in order.
        buffers: Vec<Segment>,
    },
    /// Write the (device-readable) buffers at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Where the data comes from, in order.
        buffers: Vec<Segment>,
    },
    /// Make earlier writes durable.
    Flush,
    /// Write the device's serial string into the buffers.
    GetId {
        /// Where the (up to 20-byte) ID goes.
        buffers: Vec<Segment>,
    },
    /// Deallocate the ranges; they read back as zeros.
    Discard(Vec<SectorRange>),
    /// Zero the ranges.
    WriteZeroes {
        /// The ranges to zero.
        ranges: Vec<SectorRange>,
        /// The driver allows deallocating them.
        unmap: bool,
    },
}

/// A parsed request: where its status byte goes and what it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Guest address of the status byte.
    pub status: GuestAddress,
    /// The operation, or why it is refused (reported through `status`).
    pub operation: Result<Operation, RequestError>,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain does not end in a device-writable byte, so no status can
    /// be reported; the chain is returned unanswered.
    #[error("the chain has no device-writable status byte at its end")]
    NoStatus,
    /// Fewer than 16 device-readable bytes precede the data.
    #[error("the request header is shorter than {REQUEST_HEADER_SIZE} bytes")]
    HeaderTooShort,
    /// Part of the header lies in a device-writable descriptor.
    #[error("the request header lies in a device-writable descriptor")]
    HeaderWritable,
    /// Part of the chain lies outside guest memory.
    #[error("the request refers to memory outside the guest")]
    Unreadable,
    /// The request type is unknown or its feature was not negotiated.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// A write-type request on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A data buffer goes the wrong way (a read into a device-readable
    /// buffer, a write from a device-writable one).
    #[error("a data buffer has the wrong direction for the request")]
    DataDirection,
    /// The data length is not a whole number of sectors.
    #[error("the data length {0} is not a multiple of {SECTOR_SIZE}")]
    PartialSector(u64),
    /// The request reaches past the end of the disk (or overflows).
    #[error("sectors {sector}+{count} lie outside the disk")]
    OutOfRange {
        /// First sector asked for.
        sector: u64,
        /// Number of sectors asked for.
        count: u64,
    },
    /// A `GET_ID` without a device-writable buffer.
    #[error("the ID request has no buffer to write into")]
    NoIdBuffer,
    /// The discard/write-zeroes range list is empty or not whole entries.
    #[error("the range list length {0} is not a non-zero multiple of {RANGE_ENTRY_SIZE}")]
    BadRangeList(u64),
    /// More ranges than the device advertised.
    #[error("{0} ranges exceed the device's limit")]
    TooManyRanges(u64),
    /// A range longer than the device advertised.
    #[error("a range of {0} sectors exceeds the device's limit")]
    RangeTooLong(u32),
    /// A range with flags this request type does not know.
    #[error("range flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
}

impl RequestError {
    /// The status byte the driver gets.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::UnsupportedFlags(_) => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }
}

/// Parses the chain `segments` (in chain order). `Err` means not even a
/// status can be reported ([`RequestError::NoStatus`]).
pub fn parse_request<M: Bytes<GuestAddress>>(
    mem: &M,
    segments: &[Segment],
    limits: &DiskLimits,
) -> Result<Request, RequestError> {
    let (status, body) = split_status(segments)?;
    Ok(Request {
        status,
        operation: parse_body(mem, &body, limits),
    })
}

/// The status byte is the chain's last byte; whatever precedes it in the
/// same descriptor is data.
fn split_status(segments: &[Segment]) -> Result<(GuestAddress, Vec<Segment>), RequestError> {
    let (last, rest) = segments.split_last().ok_or(RequestError::NoStatus)?;
    if !last.writable || last.len == 0 {
        return Err(RequestError::NoStatus);
    }
    let status = last
        .addr
        .checked_add(u64::from(last.len - 1))
        .ok_or(RequestError::NoStatus)?;
    let mut body = rest.to_vec();
    if last.len > 1 {
        body.push(Segment {
            len: last.len - 1,
            ..*last
        });
    }
    Ok((status, body))
}

fn parse_body<M: Bytes<GuestAddress>>(
    mem: &M,
    body: &[Segment],
    limits: &DiskLimits,
) -> Result<Operation, RequestError> {
    let (header, data) = read_prefix(mem, body, REQUEST_HEADER_SIZE).map_err(|e| match e {
        PrefixError::Short => RequestError::HeaderTooShort,
        PrefixError::Writable => RequestError::HeaderWritable,
        PrefixError::Unreadable => RequestError::Unreadable,
    })?;
    let request_type = le_u32(&header, 0);
    let sector = le_u64(&header, 8);
    match request_type {
        REQ_IN => {
            check_data(&data, true, sector, limits)?;
            Ok(Operation::Read {
                sector,
                buffers: data,
            })
        }
        REQ_OUT => {
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            check_data(&data, false, sector, limits)?;
            Ok(Operation::Write {
                sector,
                buffers: data,
            })
        }
        REQ_FLUSH => Ok(Operation::Flush),
        REQ_GET_ID => {
            let buffers: Vec<Segment> = data.into_iter().filter(|s| s.writable).collect();
            if buffers.is_empty() {
                return Err(RequestError::NoIdBuffer);
            }
            Ok(Operation::GetId { buffers })
        }
        REQ_DISCARD if limits.discard => {
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let ranges = parse_ranges(mem, &data, limits, 0)?;
            Ok(Operation::Discard(
                ranges.into_iter().map(|(r, _)| r).collect(),
            ))
        }
        REQ_WRITE_ZEROES if limits.write_zeroes => {
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let ranges = parse_ranges(mem, &data, limits, WRITE_ZEROES_FLAG_UNMAP)?;
            // One request carries one unmap decision: unmap only if every
            // range allows it.
            let unmap = ranges
                .iter()
                .all(|(_, flags)| flags & WRITE_ZEROES_FLAG_UNMAP != 0);
            Ok(Operation::WriteZeroes {
                ranges: ranges.into_iter().map(|(r, _)| r).collect(),
                unmap,
            })
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Why [`read_prefix`] failed; callers name it for their context.
enum PrefixError {
    Short,
    Writable,
    Unreadable,
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Reads the first `len` bytes of `segments`, which must be
/// device-readable; returns them and the segments after them.
fn read_prefix<M: Bytes<GuestAddress>>(
    mem: &M,
    segments: &[Segment],
    len: usize,
) -> Result<(Vec<u8>, Vec<Segment>), PrefixError> {
    let mut bytes = vec![0u8; len];
    let mut filled = 0usize;
    let mut rest = segments.iter().copied();
    let mut remainder = None;
    while filled < len {
        let segment = rest.next().ok_or(PrefixError::Short)?;
        if segment.writable {
            return Err(PrefixError::Writable);
        }
        let take = (len - filled).min(segment.len as usize);
        mem.read_slice(&mut bytes[filled..filled + take], segment.addr)
            .map_err(|_| PrefixError::Unreadable)?;
        filled += take;
        remainder = segment.skip(take as u32);
    }
    Ok((bytes, remainder.into_iter().chain(rest).collect()))
}

fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

fn check_range(sector: u64, count: u64, limits: &DiskLimits) -> Result<(), RequestError> {
    match sector.checked_add(count) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(RequestError::OutOfRange { sector, count }),
    }
}

fn check_data(
    data: &[Segment],
    device_writes: bool,
    sector: u64,
    limits: &DiskLimits,
) -> Result<(), RequestError> {
    if data.iter().any(|s| s.writable != device_writes) {
        return Err(RequestError::DataDirection);
    }
    let len = total_len(data);
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::PartialSector(len));
    }
    check_range(sector, len >> SECTOR_SHIFT, limits)
}

/// Reads and checks a discard or write-zeroes range list; `allowed_flags`
/// are the range flags this request type knows.
fn parse_ranges<M: Bytes<GuestAddress>>(
    mem: &M,
    data: &[Segment],
    limits: &DiskLimits,
    allowed_flags: u32,
) -> Result<Vec<(SectorRange, u32)>, RequestError> {
    let len = total_len(data);
    let entry = RANGE_ENTRY_SIZE as u64;
    if len == 0 || len % entry != 0 {
        return Err(RequestError::BadRangeList(len));
    }
    if len / entry > u64::from(limits.max_ranges) {
        return Err(RequestError::TooManyRanges(len / entry));
    }
    let (bytes, _) = read_prefix(mem, data, len as usize).map_err(|e| match e {
        PrefixError::Writable => RequestError::DataDirection,
        PrefixError::Short | PrefixError::Unreadable => RequestError::Unreadable,
    })?;
    bytes
        .chunks_exact(RANGE_ENTRY_SIZE)
        .map(|raw| {
            let sector = le_u64(raw, 0);
            let num_sectors = le_u32(raw, 8);
            let flags = le_u32(raw, 12);
            if flags & !allowed_flags != 0 {
                return Err(RequestError::UnsupportedFlags(flags));
            }
            if num_sectors > limits.max_range_sectors {
                return Err(RequestError::RangeTooLong(num_sectors));
            }
            check_range(sector, u64::from(num_sectors), limits)?;
            Ok((
                SectorRange {
                    sector,
                    num_sectors,
                },
                flags,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    const HEADER: GuestAddress = GuestAddress(0x1000);
    const DATA: GuestAddress = GuestAddress(0x2000);
    const STATUS: GuestAddress = GuestAddress(0x9000);
    const RANGES: GuestAddress = GuestAddress(0x3000);

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn limits() -> DiskLimits {
        DiskLimits {
            capacity_sectors: 1000,
            read_only: false,
            discard: true,
            write_zeroes: true,
            max_range_sectors: 100,
            max_ranges: 4,
        }
    }

    fn readable(addr: GuestAddress, len: u32) -> Segment {
        Segment {
            addr,
            len,
            writable: false,
        }
    }

    fn writable(addr: GuestAddress, len: u32) -> Segment {
        Segment {
            addr,
            len,
            writable: true,
        }
    }

    /// Writes a header at `HEADER` and returns the usual chain for it.
    fn chain(
        mem: &GuestMemoryMmap,
        request_type: u32,
        sector: u64,
        data: &[Segment],
    ) -> Vec<Segment> {
        let mut header = [0u8; REQUEST_HEADER_SIZE];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, HEADER).unwrap();
        let mut segments = vec![readable(HEADER, 16)];
        segments.extend_from_slice(data);
        segments.push(writable(STATUS, 1));
        segments
    }

    fn ranges(mem: &GuestMemoryMmap, entries: &[(u64, u32, u32)]) -> Segment {
        let mut bytes = Vec::new();
        for &(sector, count, flags) in entries {
            bytes.extend_from_slice(&sector.to_le_bytes());
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
        }
        mem.write_slice(&bytes, RANGES).unwrap();
        readable(RANGES, bytes.len() as u32)
    }

    fn operation(
        mem: &GuestMemoryMmap,
        segments: &[Segment],
        limits: &DiskLimits,
    ) -> Result<Operation, RequestError> {
        parse_request(mem, segments, limits).unwrap().operation
    }

    #[test]
    fn read_request_yields_sector_and_buffers() {
        let mem = memory();
        let data = [
            writable(DATA, 512),
            writable(DATA.unchecked_add(0x1000), 1024),
        ];
        let segments = chain(&mem, REQ_IN, 997, &data);

        let request = parse_request(&mem, &segments, &limits()).unwrap();

        assert_eq!(request.status, STATUS);
        assert_eq!(
            request.operation,
            Ok(Operation::Read {
                sector: 997,
                buffers: data.to_vec()
            })
        );
    }

    #[test]
    fn write_request_yields_readable_buffers() {
        let mem = memory();
        let segments = chain(&mem, REQ_OUT, 0, &[readable(DATA, 4096)]);

        let result = operation(&mem, &segments, &limits());

        assert_eq!(
            result,
            Ok(Operation::Write {
                sector: 0,
                buffers: vec![readable(DATA, 4096)]
            })
        );
    }

    #[test]
    fn read_past_the_last_sector_is_out_of_range() {
        let mem = memory();
        let segments = chain(&mem, REQ_IN, 999, &[writable(DATA, 1024)]);

        let result = operation(&mem, &segments, &limits());

        assert_eq!(
            result,
            Err(RequestError::OutOfRange {
                sector: 999,
                count: 2
            })
        );
        assert_eq!(result.unwrap_err().status(), STATUS_IOERR);
    }

    #[test]
    fn sector_near_u64_max_does_not_wrap_around() {
        let mem = memory();
        let segments = chain(&mem, REQ_OUT, u64::MAX, &[readable(DATA, 512)]);

        let result = operation(&mem, &segments, &limits());

        assert!(matches!(result, Err(RequestError::OutOfRange { .. })));
    }

    #[test]
    fn data_that_is_not_whole_sectors_is_refused() {
        let mem = memory();
        let segments = chain(&mem, REQ_IN, 0, &[writable(DATA, 500)]);

        let result = operation(&mem, &segments, &limits());

        assert_eq!(result, Err(RequestError::PartialSector(500)));
    }

    #[test]
    fn data_buffer_going_the_wrong_way_is_refused() {
        let mem = memory();
        let cases = [
            (REQ_IN, readable(DATA, 512)),
            (REQ_OUT, writable(DATA, 512)),
        ];

        for (request_type, data) in cases {
            let segments = chain(&mem, request_type, 0, &[data]);
            let result = operation(&mem, &segments, &limits());

            assert_eq!(result, Err(RequestError::DataDirection));
        }
    }

    #[test]
    fn write_to_a_read_only_disk_is_ioerr() {
        let mem = memory();
        let read_only = DiskLimits {
            read_only: true,
            ..limits()
        };
        for request_type in [REQ_OUT, REQ_DISCARD, REQ_WRITE_ZEROES] {
            let data = if request_type == REQ_OUT {
                readable(DATA, 512)
            } else {
                ranges(&mem, &[(0, 1, 0)])
            };
            let segments = chain(&mem, request_type, 0, &[data]);

            let result = operation(&mem, &segments, &read_only);

            assert_eq!(result, Err(RequestError::ReadOnly), "type {request_type}");
            assert_eq!(result.unwrap_err().status(), STATUS_IOERR);
        }
    }

    #[test]
    fn unknown_request_type_is_unsupported() {
        let mem = memory();
        let segments = chain(&mem, 0x4242, 0, &[]);

        let result = operation(&mem, &segments, &limits());

        assert_eq!(result, Err(RequestError::Unsupported(0x4242)));
        assert_eq!(result.unwrap_err().status(), STATUS_UNSUPP);
    }

    #[test]
    fn discard_without_the_negotiated_feature_is_unsupported() {
        let mem = memory();
        let segments = chain(&mem, REQ_DISCARD, 0, &[ranges(&mem, &[(0, 8, 0)])]);
        let no_discard = DiskLimits {
            discard: false,
            ..limits()
        };

        let result = operation(&mem, &segments, &no_discard);

        assert_eq!(result, Err(RequestError::Unsupported(REQ_DISCARD)));
    }

    #[test]
    fn chain_without_a_writable_last_byte_has_no_status() {
        let mem = memory();
        let mut segments = chain(&mem, REQ_FLUSH, 0, &[]);
        segments.last_mut().unwrap().writable = false;

        let no_status = parse_request(&mem, &segments, &limits());
        let empty = parse_request(&mem, &[], &limits());
        let zero_length = parse_request(&mem, &[writable(STATUS, 0)], &limits());

        assert_eq!(no_status, Err(RequestError::NoStatus));
        assert_eq!(empty, Err(RequestError::NoStatus));
        assert_eq!(zero_length, Err(RequestError::NoStatus));
    }

    #[test]
    fn malformed_header_is_refused() {
        let mem = memory();
        let cases = [
            (readable(HEADER, 12), RequestError::HeaderTooShort),
            (writable(HEADER, 16), RequestError::HeaderWritable),
            (
                readable(GuestAddress(0x20_0000), 16),
                RequestError::Unreadable,
            ),
        ];

        for (header, expected) in cases {
            let result = operation(&mem, &[header, writable(STATUS, 1)], &limits());

            assert_eq!(result, Err(expected));
        }
    }

    #[test]
    fn header_split_across_descriptors_and_merged_with_data_is_parsed() {
        let mem = memory();
        chain(&mem, REQ_OUT, 5, &[]);
        // 10 header bytes, then the other 6 followed by 512 data bytes.
        let segments = [
            readable(HEADER, 10),
            readable(HEADER.unchecked_add(10), 6 + 512),
            writable(STATUS, 1),
        ];

        let result = operation(&mem, &segments, &limits());

        assert_eq!(
            result,
            Ok(Operation::Write {
                sector: 5,
                buffers: vec![readable(HEADER.unchecked_add(16), 512)]
            })
        );
    }

    #[test]
    fn status_byte_sharing_the_last_data_descriptor_is_found() {
        let mem = memory();
        chain(&mem, REQ_IN, 5, &[]);
        let segments = [readable(HEADER, 16), writable(DATA, 512 + 1)];

        let request = parse_request(&mem, &segments, &limits()).unwrap();

        assert_eq!(request.status, DATA.unchecked_add(512));
        assert_eq!(
            request.operation,
            Ok(Operation::Read {
                sector: 5,
                buffers: vec![writable(DATA, 512)]
            })
        );
    }

    #[test]
    fn get_id_needs_a_writable_buffer() {
        let mem = memory();
        let with_buffer = chain(&mem, REQ_GET_ID, 0, &[writable(DATA, 20)]);
        let without = chain(&mem, REQ_GET_ID, 0, &[]);

        assert_eq!(
            operation(&mem, &with_buffer, &limits()),
            Ok(Operation::GetId {
                buffers: vec![writable(DATA, 20)]
            })
        );
        assert_eq!(
            operation(&mem, &without, &limits()),
            Err(RequestError::NoIdBuffer)
        );
    }

    #[test]
    fn discard_ranges_are_read_from_the_data() {
        let mem = memory();
        let segments = chain(
            &mem,
            REQ_DISCARD,
            0,
            &[ranges(&mem, &[(8, 16, 0), (900, 100, 0)])],
        );

        let result = operation(&mem, &segments, &limits());

        assert_eq!(
            result,
            Ok(Operation::Discard(vec![
                SectorRange {
                    sector: 8,
                    num_sectors: 16
                },
                SectorRange {
                    sector: 900,
                    num_sectors: 100
                },
            ]))
        );
    }

    #[test]
    fn discard_range_that_overflows_or_passes_the_end_is_refused() {
        let mem = memory();
        let wraps = chain(
            &mem,
            REQ_DISCARD,
            0,
            &[ranges(&mem, &[(u64::MAX - 1, 8, 0)])],
        );
        let wraps_result = operation(&mem, &wraps, &limits());
        let past_end = chain(&mem, REQ_DISCARD, 0, &[ranges(&mem, &[(995, 8, 0)])]);
        let past_end_result = operation(&mem, &past_end, &limits());

        assert!(matches!(wraps_result, Err(RequestError::OutOfRange { .. })));
        assert_eq!(
            past_end_result,
            Err(RequestError::OutOfRange {
                sector: 995,
                count: 8
            })
        );
    }

    #[test]
    fn discard_range_list_must_be_whole_entries_within_limits() {
        let mem = memory();
        let partial = chain(&mem, REQ_DISCARD, 0, &[readable(RANGES, 20)]);
        let empty = chain(&mem, REQ_DISCARD, 0, &[]);
        let five = [(0, 1, 0); 5];
        let too_many = chain(&mem, REQ_DISCARD, 0, &[ranges(&mem, &five)]);
        let too_long = chain(&mem, REQ_DISCARD, 0, &[ranges(&mem, &[(0, 101, 0)])]);

        assert_eq!(
            operation(&mem, &partial, &limits()),
            Err(RequestError::BadRangeList(20))
        );
        assert_eq!(
            operation(&mem, &empty, &limits()),
            Err(RequestError::BadRangeList(0))
        );
        assert_eq!(
            operation(&mem, &too_many, &limits()),
            Err(RequestError::TooManyRanges(5))
        );
        assert_eq!(
            operation(&mem, &too_long, &limits()),
            Err(RequestError::RangeTooLong(101))
        );
    }

    #[test]
    fn discard_with_unmap_flag_is_unsupported_but_write_zeroes_takes_it() {
        let mem = memory();
        let discard = chain(&mem, REQ_DISCARD, 0, &[ranges(&mem, &[(0, 8, 1)])]);
        let discard_result = operation(&mem, &discard, &limits());
        let zeroes = chain(&mem, REQ_WRITE_ZEROES, 0, &[ranges(&mem, &[(0, 8, 1)])]);
        let zeroes_result = operation(&mem, &zeroes, &limits());
        let unknown = chain(&mem, REQ_WRITE_ZEROES, 0, &[ranges(&mem, &[(0, 8, 2)])]);
        let unknown_result = operation(&mem, &unknown, &limits());

        assert_eq!(discard_result, Err(RequestError::UnsupportedFlags(1)));
        assert_eq!(discard_result.unwrap_err().status(), STATUS_UNSUPP);
        assert_eq!(
            zeroes_result,
            Ok(Operation::WriteZeroes {
                ranges: vec![SectorRange {
                    sector: 0,
                    num_sectors: 8
                }],
                unmap: true
            })
        );
        assert_eq!(unknown_result, Err(RequestError::UnsupportedFlags(2)));
    }

    #[test]
    fn discard_range_list_in_a_writable_buffer_is_refused() {
        let mem = memory();
        let mut list = ranges(&mem, &[(0, 8, 0)]);
        list.writable = true;
        let segments = chain(&mem, REQ_DISCARD, 0, &[list]);

        let result = operation(&mem, &segments, &limits());

        assert_eq!(result, Err(RequestError::DataDirection));
    }
}
