// IPv6 next to Packets.swift's IPv4: addresses, a frame builder with extension headers and
// fragments, a parser that walks the extension headers and checks the upper-layer checksum
// from scratch (IPv6 pseudo header, RFC 8200 8.1), and the IPv6 side of the map fixture.

@preconcurrency import Glibc
import CMasq
@testable import Datapath

/// An IPv6 address; `key` is the masq_addr_v6 the maps hold (network order in memory).
struct PacketIPv6: Equatable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    var bytes: [UInt8]

    init(_ bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    init(stringLiteral value: String) {
        var addr = in6_addr()
        precondition(inet_pton(AF_INET6, value, &addr) == 1, "bad address literal \(value)")
        self.init(withUnsafeBytes(of: addr) { Array($0) })
    }

    init(key: masq_addr_v6) {
        self.init(withUnsafeBytes(of: key) { Array($0) })
    }

    var key: masq_addr_v6 {
        var key = masq_addr_v6()
        withUnsafeMutableBytes(of: &key) { $0.copyBytes(from: bytes) }
        return key
    }

    var description: String {
        var addr = in6_addr()
        withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: bytes) }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(AF_INET6, &addr, &buf, socklen_t(buf.count))
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension Proto {
    static let icmpv6: UInt8 = 58
    static let hopByHop: UInt8 = 0
    static let routing: UInt8 = 43
    static let fragment: UInt8 = 44
    static let destOptions: UInt8 = 60
}

enum ICMPv6Type {
    static let destUnreachable: UInt8 = 1
    static let packetTooBig: UInt8 = 2
    static let timeExceeded: UInt8 = 3
    static let paramProblem: UInt8 = 4
    static let echoRequest: UInt8 = 128
    static let echoReply: UInt8 = 129
    static let mldQuery: UInt8 = 130
    static let routerSolicitation: UInt8 = 133
    static let routerAdvertisement: UInt8 = 134
    static let neighborSolicitation: UInt8 = 135
    static let neighborAdvertisement: UInt8 = 136
    static let mldv2Report: UInt8 = 143
}

/// The addresses of the IPv6 fixture: a pod behind a node whose uplink has fd00:50::2.
enum Net6 {
    static let snat: PacketIPv6 = "fd00:50::2"
    static let pod1: PacketIPv6 = "fd00:10:244:1::10"
    static let pod2: PacketIPv6 = "fd00:10:244:1::11"
    static let otherPod: PacketIPv6 = "fd00:10:244:1::99"
    static let server: PacketIPv6 = "2001:db8:60::1"
    static let server2: PacketIPv6 = "2001:db8:60::2"
    static let notPod: PacketIPv6 = "fd00:99::4"
    static let node2: PacketIPv6 = "fd00:50::3"
    static let linkLocal: PacketIPv6 = "fe80::10"
    static let router: PacketIPv6 = "fe80::1"
    static let podCIDR: (PacketIPv6, UInt32) = ("fd00:10:244:1::", 64)
}

/// The IPv6 pseudo-header sum (RFC 8200 8.1): both addresses, the upper-layer length as 32
/// bits, three zero bytes and the next header.
func pseudoHeaderSum6(src: PacketIPv6, dst: PacketIPv6, proto: UInt8, length: Int) -> UInt32 {
    UInt32(onesComplementSum(src.bytes + dst.bytes + be32(UInt32(length)) + [0, 0, 0, proto]))
}

/// One extension header before the upper layer, 8 bytes each.
enum IPv6Ext {
    case hopByHop, destOptions, routing
    case fragment(offset: Int, more: Bool, id: UInt32)

    var number: UInt8 {
        switch self {
        case .hopByHop: Proto.hopByHop
        case .destOptions: Proto.destOptions
        case .routing: Proto.routing
        case .fragment: Proto.fragment
        }
    }

    func bytes(next: UInt8) -> [UInt8] {
        switch self {
        case .hopByHop, .destOptions: [next, 0, 1, 4, 0, 0, 0, 0] // a PadN option
        case .routing: [next, 0, 253, 0, 0, 0, 0, 0] // experimental type, segments left 0
        case let .fragment(offset, more, id): [next, 0] + be(UInt16(offset) | (more ? 1 : 0)) + be32(id)
        }
    }
}

/// The upper-layer bytes of `l4` from src to dst with a valid checksum (ICMPv6: over the
/// pseudo header too). `.icmpEcho` takes ICMPv6 types.
func ipv6Segment(src: PacketIPv6, dst: PacketIPv6, _ l4: L4, payload: [UInt8] = Array("masq".utf8)) -> (proto: UInt8, seg: [UInt8]) {
    var seg: [UInt8]
    let proto: UInt8
    var csumOff: Int?
    switch l4 {
    case let .tcp(sport, dport, flags, seq, ack):
        proto = Proto.tcp
        seg = be(sport) + be(dport) + be32(seq) + be32(ack) + [0x50, flags] + be(64240) + [0, 0, 0, 0] + payload
        csumOff = 16
    case let .udp(sport, dport, zeroChecksum):
        proto = Proto.udp
        seg = be(sport) + be(dport) + be(UInt16(8 + payload.count)) + [0, 0] + payload
        csumOff = zeroChecksum ? nil : 6
    case let .icmpEcho(type, id, seq):
        proto = Proto.icmpv6
        seg = [type, 0, 0, 0] + be(id) + be(seq) + payload
        csumOff = 2
    case let .icmp(type, code, body):
        proto = Proto.icmpv6
        seg = [type, code, 0, 0] + body
        csumOff = 2
    case let .raw(p, bytes):
        proto = p
        seg = bytes
    }
    if let csumOff {
        var sum = internetChecksum(seg, initial: pseudoHeaderSum6(src: src, dst: dst, proto: proto, length: seg.count))
        if proto == Proto.udp && sum == 0 { sum = 0xffff }
        seg.replace(at: csumOff, with: be(sum))
    }
    return (proto, seg)
}

/// An Ethernet + IPv6 frame: `ext` in order, then `body` (an upper-layer segment of `proto`).
/// `payloadLength` overrides the header's field (for malformed packets).
func ipv6Frame(src: PacketIPv6, dst: PacketIPv6, proto: UInt8, body: [UInt8], ext: [IPv6Ext] = [],
               hopLimit: UInt8 = 64, payloadLength: Int? = nil) -> [UInt8] {
    var chain: [UInt8] = []
    var next = proto
    for header in ext.reversed() {
        chain = header.bytes(next: next) + chain
        next = header.number
    }
    let payload = chain + body
    let ip: [UInt8] = [0x60, 0, 0, 0] + be(UInt16(payloadLength ?? payload.count)) + [next, hopLimit] + src.bytes + dst.bytes
    return ethernetHeader(type: 0x86dd) + ip + payload
}

/// An Ethernet + IPv6 frame of `l4` with valid checksums.
func ipv6Frame(src: PacketIPv6, dst: PacketIPv6, _ l4: L4, payload: [UInt8] = Array("masq".utf8),
               ext: [IPv6Ext] = []) -> [UInt8] {
    let (proto, seg) = ipv6Segment(src: src, dst: dst, l4, payload: payload)
    return ipv6Frame(src: src, dst: dst, proto: proto, body: seg, ext: ext)
}

/// The fragments of `l4`'s datagram, `chunk` bytes of the upper layer each (a multiple of 8),
/// in order, each with a fragment header of identification `id`.
func ipv6Fragments(src: PacketIPv6, dst: PacketIPv6, _ l4: L4, payload: [UInt8], chunk: Int, id: UInt32) -> [[UInt8]] {
    precondition(chunk % 8 == 0)
    let (proto, seg) = ipv6Segment(src: src, dst: dst, l4, payload: payload)
    var frames: [[UInt8]] = []
    var offset = 0
    while offset < seg.count {
        let part = Array(seg[offset..<min(offset + chunk, seg.count)])
        let more = offset + part.count < seg.count
        frames.append(ipv6Frame(src: src, dst: dst, proto: proto, body: part,
                                ext: [.fragment(offset: offset, more: more, id: id)]))
        offset += part.count
    }
    return frames
}

/// An Ethernet + IPv6 frame as the program left it: the extension headers walked, the
/// upper-layer checksum verified from scratch (not for fragments, whose upper layer is split).
struct ParsedFrame6 {
    var src: PacketIPv6
    var dst: PacketIPv6
    var proto: UInt8
    /// Extension header numbers in order.
    var ext: [UInt8] = []
    var fragmentOffset: Int?
    var moreFragments = false
    /// The upper-layer bytes (of this fragment, for a fragment).
    var seg: [UInt8]
    var sport: UInt16 = 0
    var dport: UInt16 = 0
    var icmpType: UInt8 = 0
    var l4ChecksumOK: Bool?

    init(_ frame: [UInt8]) {
        self.init(ip: Array(frame[14...]))
    }

    /// An IPv6 packet; one an ICMPv6 error quotes may be cut short, and then its upper-layer
    /// checksum is not verified (nil).
    init(ip: [UInt8]) {
        src = PacketIPv6(Array(ip[8..<24]))
        dst = PacketIPv6(Array(ip[24..<40]))
        let complete = 40 + Int(ip.u16(at: 4)) <= ip.count
        let end = min(40 + Int(ip.u16(at: 4)), ip.count)
        var next = ip[6]
        var off = 40
        while [Proto.hopByHop, Proto.routing, Proto.destOptions, Proto.fragment].contains(next) {
            ext.append(next)
            if next == Proto.fragment {
                let field = ip.u16(at: off + 2)
                fragmentOffset = Int(field & 0xfff8)
                moreFragments = field & 1 != 0
                next = ip[off]
                off += 8
            } else {
                let len = (Int(ip[off + 1]) + 1) * 8
                next = ip[off]
                off += len
            }
        }
        proto = next
        seg = Array(ip[off..<end])
        guard fragmentOffset ?? 0 == 0 else { return }
        switch proto {
        case Proto.tcp, Proto.udp:
            sport = seg.u16(at: 0)
            dport = seg.u16(at: 2)
        case Proto.icmpv6:
            icmpType = seg[0]
            sport = seg.u16(at: 4)
            dport = sport
        default:
            return
        }
        if fragmentOffset == nil && complete {
            l4ChecksumOK = onesComplementSum(seg, initial: pseudoHeaderSum6(src: src, dst: dst, proto: proto, length: seg.count)) == 0xffff
        }
    }

    var checksumOK: Bool { l4ChecksumOK == true }
}

extension RunResult {
    var parsed6: ParsedFrame6 { ParsedFrame6(frame) }
}

/// An Ethernet + IPv6 ICMPv6 error from src to dst quoting `offending` (a frame; the first
/// `quote` bytes of its IPv6 packet when given), with `word` in the 4 bytes after the checksum
/// (packet too big: the MTU; parameter problem: the pointer).
func icmpv6ErrorFrame(src: PacketIPv6, dst: PacketIPv6, type: UInt8, code: UInt8, word: UInt32 = 0,
                      quoting offending: [UInt8], quote: Int? = nil) -> [UInt8] {
    var inner = Array(offending[14...])
    if let quote { inner = Array(inner.prefix(quote)) }
    return ipv6Frame(src: src, dst: dst, .icmp(type: type, code: code, body: be32(word) + inner))
}

/// An ICMPv6 error as the program left it: the outer packet (its ICMPv6 checksum verified over
/// the pseudo header by `ParsedFrame6`), then the quoted packet, parsed the same way: its
/// extension headers walked and its L4 checksum recomputed over the quoted addresses.
struct ParsedICMPv6Error {
    var outer: ParsedFrame6
    var inner: ParsedFrame6
    var type: UInt8
    var code: UInt8
    /// Bytes 4-7 of the ICMPv6 header: packet too big's MTU, parameter problem's pointer.
    var word: UInt32

    init(_ frame: [UInt8]) {
        outer = ParsedFrame6(frame)
        let icmp = outer.seg
        type = icmp[0]
        code = icmp[1]
        word = UInt32(icmp.u16(at: 4)) << 16 | UInt32(icmp.u16(at: 6))
        inner = ParsedFrame6(ip: Array(icmp[8...]))
    }

    var innerSrc: PacketIPv6 { inner.src }
    var innerDst: PacketIPv6 { inner.dst }
    var innerProto: UInt8 { inner.proto }
    /// TCP/UDP ports; for a quoted echo, its id in both.
    var innerSport: UInt16 { inner.sport }
    var innerDport: UInt16 { inner.dport }
    /// nil when the quote is cut short of the quoted datagram (or is a fragment).
    var innerL4ChecksumOK: Bool? { inner.l4ChecksumOK }
    /// The quoted L4 checksum field (0 when the quote stops before it).
    var innerL4Checksum: UInt16 {
        let at = inner.proto == Proto.tcp ? 16 : inner.proto == Proto.udp ? 6 : 2
        return inner.seg.count >= at + 2 ? inner.seg.u16(at: at) : 0
    }
}

/// A masq_nat_v6 key as the datapath writes it.
func natKey6(_ saddr: PacketIPv6, _ daddr: PacketIPv6, sport: UInt16, dport: UInt16, proto: UInt8,
             dir: Int32) -> masq_nat_key_v6 {
    masq_nat_key_v6(saddr: saddr.key, daddr: daddr.key, sport: be16(sport), dport: be16(dport),
                    proto: proto, dir: UInt8(dir), pad: 0)
}

extension TestDatapath {
    /// The usual dual-stack node: `standard()`'s IPv4 plus IPv6 masquerading to fd00:50::2,
    /// pod CIDR fd00:10:244:1::/64.
    static func dualStack(flags: UInt32 = MASQ_CFG_IPV4_MASQ | MASQ_CFG_IPV6_MASQ, portMin: UInt16 = 32768,
                          portMax: UInt16 = 65535) throws -> TestDatapath {
        let dp = try TestDatapath.standard(flags: flags, portMin: portMin, portMax: portMax)
        try dp.addDeviceV6(snat: Net6.snat)
        try dp.addPodCIDRV6(Net6.podCIDR.0, Net6.podCIDR.1)
        return dp
    }

    /// Gives the test device (ifindex 1) its IPv6 SNAT address, as masqd writes it.
    func addDeviceV6(ifindex: UInt32 = Net.testIfindex, snat: PacketIPv6) throws {
        var dev = try devices.lookup(ifindex, as: masq_device.self) ?? masq_device()
        withUnsafeMutableBytes(of: &dev.snat_v6) { $0.copyBytes(from: snat.bytes) }
        dev.flags |= MASQ_DEV_HAS_V6
        try devices.update(ifindex, dev)
        try object.map(MASQ_MAP_SNAT_V6).update(snat.key, UInt8(MASQ_CIDR_PRESENT))
    }

    private func lpm6(_ addr: PacketIPv6, _ len: UInt32) -> masq_lpm_v6 {
        var key = masq_lpm_v6()
        key.prefixlen = len
        withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: addr.bytes) }
        return key
    }

    func addPodCIDRV6(_ addr: PacketIPv6, _ len: UInt32) throws {
        try object.map(MASQ_MAP_PODS_V6).update(lpm6(addr, len), UInt8(MASQ_CIDR_PRESENT))
    }

    func addNonMasqCIDRV6(_ addr: PacketIPv6, _ len: UInt32) throws {
        try object.map(MASQ_MAP_NONMASQ_V6).update(lpm6(addr, len), UInt8(MASQ_CIDR_PRESENT))
    }

    func addNodeV6(_ addr: PacketIPv6) throws {
        try object.map(MASQ_MAP_NODES_V6).update(addr.key, UInt8(MASQ_CIDR_PRESENT))
    }

    func entry6(_ key: masq_nat_key_v6) throws -> masq_nat_entry_v6? {
        try object.map(MASQ_MAP_NAT_V6).lookup(key, as: masq_nat_entry_v6.self)
    }

    func entries6() throws -> [(masq_nat_key_v6, masq_nat_entry_v6)] {
        try object.map(MASQ_MAP_NAT_V6).entries(key: masq_nat_key_v6.self, value: masq_nat_entry_v6.self)
    }

    /// An IPv6 counter of masq_stats (MASQ_STAT_V6), summed over CPUs.
    func stat6(_ index: masq_stat) throws -> UInt64 {
        try stats.lookupPerCPU(MASQ_STAT_MAX.rawValue + index.rawValue, as: UInt64.self).reduce(0, +)
    }
}
