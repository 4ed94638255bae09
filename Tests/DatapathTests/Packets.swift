// Packet builders, a parser that checks checksums from scratch, and the map fixture every
// datapath test starts from. Tests build a frame, set up the maps, run the program once with
// BPF_PROG_TEST_RUN, then check the verdict, the map state and the rewritten bytes.

@preconcurrency import Glibc
import CLibbpf
import CMasq
@testable import Daemon
@testable import Datapath

// MARK: - Addresses and constants

/// An IPv4 address; `raw` is the __be32 the maps hold (network order in memory).
struct PacketIPv4: Equatable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    var octets: [UInt8]

    init(_ octets: [UInt8]) {
        precondition(octets.count == 4)
        self.octets = octets
    }

    init(stringLiteral value: String) {
        let parts = value.split(separator: ".").compactMap { UInt8($0) }
        precondition(parts.count == 4, "bad address literal \(value)")
        self.init(parts)
    }

    /// Network order in memory, as `__be32` fields and map keys hold it.
    init(raw: UInt32) {
        self.init(withUnsafeBytes(of: raw) { Array($0) })
    }

    var raw: UInt32 { octets.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } }
    var description: String { octets.map(String.init).joined(separator: ".") }
}

/// A port (or ICMP echo id) as a `__be16` field holds it.
func be16(_ port: UInt16) -> UInt16 { port.bigEndian }
func host16(_ raw: UInt16) -> UInt16 { UInt16(bigEndian: raw) }

enum TC {
    /// TC_ACT_UNSPEC (-1): masq passes a packet on to the next program on the hook (tcx: TCX_NEXT).
    static let pass = UInt32(bitPattern: -1)
    static let shot: UInt32 = 2  // TC_ACT_SHOT
}

enum Proto {
    static let icmp: UInt8 = 1
    static let tcp: UInt8 = 6
    static let udp: UInt8 = 17
}

enum TCPFlag {
    static let fin: UInt8 = 0x01
    static let syn: UInt8 = 0x02
    static let rst: UInt8 = 0x04
    static let psh: UInt8 = 0x08
    static let ack: UInt8 = 0x10
}

enum ICMPType {
    static let echoReply: UInt8 = 0
    static let unreachable: UInt8 = 3
    static let echo: UInt8 = 8
}

/// The addresses the standard fixture uses.
enum Net {
    static let snat: PacketIPv4 = "192.168.0.10"      // the device's SNAT address
    static let pod1: PacketIPv4 = "10.0.1.5"          // inside pod CIDR 10.0.1.0/24
    static let pod2: PacketIPv4 = "10.0.1.6"
    static let otherPod: PacketIPv4 = "10.0.1.99"
    static let server: PacketIPv4 = "93.184.216.34"   // the outside world
    static let server2: PacketIPv4 = "198.18.7.7"
    static let notPod: PacketIPv4 = "172.31.0.4"      // a source outside every pod CIDR
    static let node2: PacketIPv4 = "192.168.0.11"     // another cluster node
    static let podCIDR: (PacketIPv4, UInt32) = ("10.0.1.0", 24)
    /// The ifindex BPF_PROG_TEST_RUN gives the skb when no ctx sets one: loopback.
    static let testIfindex: UInt32 = 1
}

// MARK: - Checksums

/// The Internet checksum (RFC 1071) of `bytes`, folded, not yet complemented.
func onesComplementSum(_ bytes: [UInt8], initial: UInt32 = 0) -> UInt16 {
    var sum = initial
    var i = 0
    while i + 1 < bytes.count {
        sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
        i += 2
    }
    if i < bytes.count { sum += UInt32(bytes[i]) << 8 }
    while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
    return UInt16(sum)
}

func internetChecksum(_ bytes: [UInt8], initial: UInt32 = 0) -> UInt16 {
    ~onesComplementSum(bytes, initial: initial)
}

/// The TCP/UDP pseudo-header sum (RFC 793, RFC 768).
func pseudoHeaderSum(src: [UInt8], dst: [UInt8], proto: UInt8, length: Int) -> UInt32 {
    UInt32(onesComplementSum(src + dst + [0, proto, UInt8(length >> 8), UInt8(length & 0xff)]))
}

// MARK: - Building frames

/// The L4 part of a test packet.
enum L4: Sendable {
    case tcp(sport: UInt16, dport: UInt16, flags: UInt8 = TCPFlag.syn, seq: UInt32 = 1, ack: UInt32 = 0)
    case udp(sport: UInt16, dport: UInt16, zeroChecksum: Bool = false)
    case icmpEcho(type: UInt8, id: UInt16, seq: UInt16 = 1)
    /// Any ICMP message: type, code, then the rest of the 8-byte header and a body.
    case icmp(type: UInt8, code: UInt8, body: [UInt8])
    /// Raw bytes after the IPv4 header, checksums untouched (for malformed packets).
    case raw(proto: UInt8, bytes: [UInt8])
}

/// Builds an Ethernet + IPv4 frame with valid checksums.
func ipv4Frame(src: PacketIPv4, dst: PacketIPv4, _ l4: L4, payload: [UInt8] = Array("masq".utf8),
               options: [UInt8] = [], fragment: UInt16 = 0, ipID: UInt16 = 0x1234) -> [UInt8] {
    var seg: [UInt8]
    var proto: UInt8
    switch l4 {
    case let .tcp(sport, dport, flags, seq, ack):
        proto = Proto.tcp
        seg = be(sport) + be(dport) + be32(seq) + be32(ack) + [0x50, flags] + be(64240) + [0, 0, 0, 0]
        seg += payload
        let sum = internetChecksum(seg, initial: pseudoHeaderSum(src: src.octets, dst: dst.octets, proto: proto, length: seg.count))
        seg.replace(at: 16, with: be(sum))
    case let .udp(sport, dport, zeroChecksum):
        proto = Proto.udp
        seg = be(sport) + be(dport) + be(UInt16(8 + payload.count)) + [0, 0] + payload
        if !zeroChecksum {
            var sum = internetChecksum(seg, initial: pseudoHeaderSum(src: src.octets, dst: dst.octets, proto: proto, length: seg.count))
            if sum == 0 { sum = 0xffff }
            seg.replace(at: 6, with: be(sum))
        }
    case let .icmpEcho(type, id, seq):
        proto = Proto.icmp
        seg = [type, 0, 0, 0] + be(id) + be(seq) + payload
        seg.replace(at: 2, with: be(internetChecksum(seg)))
    case let .icmp(type, code, body):
        proto = Proto.icmp
        seg = [type, code, 0, 0] + body
        seg.replace(at: 2, with: be(internetChecksum(seg)))
    case let .raw(p, bytes):
        proto = p
        seg = bytes
    }
    precondition(options.count % 4 == 0 && options.count <= 40)
    let ihl = UInt8(5 + options.count / 4)
    var ip: [UInt8] = [0x40 | ihl, 0] + be(UInt16(Int(ihl) * 4 + seg.count)) + be(ipID) + be(fragment)
    ip += [64, proto, 0, 0] + src.octets + dst.octets + options
    ip.replace(at: 10, with: be(internetChecksum(ip)))
    return ethernetHeader(type: 0x0800) + ip + seg
}

/// An Ethernet header to the test device's own address: BPF_PROG_TEST_RUN sets pkt_type from
/// the destination as the kernel does on receive, and loopback's address is all zeros, so the
/// frame is PACKET_HOST (`dst` to send it elsewhere).
func ethernetHeader(type: UInt16, dst: [UInt8] = [0, 0, 0, 0, 0, 0]) -> [UInt8] {
    dst + [0x02, 0, 0, 0, 0, 0x01] + be(type)
}

func be(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
func be32(_ v: UInt32) -> [UInt8] { be(UInt16(v >> 16)) + be(UInt16(v & 0xffff)) }

extension Array where Element == UInt8 {
    mutating func replace(at offset: Int, with bytes: [UInt8]) {
        replaceSubrange(offset..<offset + bytes.count, with: bytes)
    }

    func u16(at offset: Int) -> UInt16 { UInt16(self[offset]) << 8 | UInt16(self[offset + 1]) }
}

// MARK: - Reading frames back

/// An Ethernet + IPv4 frame as the program left it, with every checksum recomputed from scratch.
struct ParsedFrame {
    var src: PacketIPv4
    var dst: PacketIPv4
    var proto: UInt8
    var ihl: Int
    /// TCP/UDP ports, or the ICMP echo id as `sport` and `dport`.
    var sport: UInt16
    var dport: UInt16
    var icmpType: UInt8
    var l4Checksum: UInt16
    /// The IPv4 header checksum verifies.
    var ipChecksumOK: Bool
    /// The TCP/UDP (with pseudo header) or ICMP checksum verifies; a UDP checksum of 0 counts
    /// as valid (none).
    var l4ChecksumOK: Bool

    init(_ frame: [UInt8]) {
        let ip = Array(frame[14...])
        ihl = Int(ip[0] & 0x0f)
        let hlen = ihl * 4
        let total = Int(ip.u16(at: 2))
        src = PacketIPv4(Array(ip[12..<16]))
        dst = PacketIPv4(Array(ip[16..<20]))
        proto = ip[9]
        ipChecksumOK = onesComplementSum(Array(ip[0..<hlen])) == 0xffff
        let seg = Array(ip[hlen..<total])
        icmpType = 0
        switch proto {
        case Proto.tcp, Proto.udp:
            sport = seg.u16(at: 0)
            dport = seg.u16(at: 2)
            l4Checksum = seg.u16(at: proto == Proto.tcp ? 16 : 6)
            let sum = onesComplementSum(seg, initial: pseudoHeaderSum(src: src.octets, dst: dst.octets, proto: proto, length: seg.count))
            l4ChecksumOK = (proto == Proto.udp && l4Checksum == 0) || sum == 0xffff
        case Proto.icmp:
            icmpType = seg[0]
            sport = seg.u16(at: 4)
            dport = sport
            l4Checksum = seg.u16(at: 2)
            l4ChecksumOK = onesComplementSum(seg) == 0xffff
        default:
            sport = 0
            dport = 0
            l4Checksum = 0
            l4ChecksumOK = true
        }
    }

    var checksumsOK: Bool { ipChecksumOK && l4ChecksumOK }
}

// MARK: - The datapath under test

/// One program run: the verdict and the frame as the program left it.
struct RunResult {
    var verdict: UInt32
    var frame: [UInt8]
    var parsed: ParsedFrame { ParsedFrame(frame) }
}

/// A loaded, unpinned datapath object with its maps, set up the way masqd would set it up.
/// Nothing is pinned, so a test leaves nothing in bpffs; each test makes its own.
final class TestDatapath {
    let object: BPFObject
    let config: BPFMap
    let devices: BPFMap
    let nat: BPFMap
    let pods: BPFMap
    let nonmasq: BPFMap
    let nodes: BPFMap
    let drops: BPFMap
    let stats: BPFMap
    private let egressFD: Int32
    private let ingressFD: Int32

    /// Loads the embedded object (or `bytes`) with a small NAT table (the hash preallocates
    /// every entry).
    init(natEntries: UInt32 = 4096, bytes: [UInt8] = EmbeddedDatapath.bytes) throws {
        object = try BPFObject(bytes: bytes, pinRoot: nil, maxEntries: [MASQ_MAP_NAT_V4: natEntries])
        config = try object.map(MASQ_MAP_CONFIG)
        devices = try object.map(MASQ_MAP_DEVICES)
        nat = try object.map(MASQ_MAP_NAT_V4)
        pods = try object.map(MASQ_MAP_PODS_V4)
        nonmasq = try object.map(MASQ_MAP_NONMASQ_V4)
        nodes = try object.map(MASQ_MAP_NODES_V4)
        drops = try object.map(MASQ_MAP_DROPS)
        stats = try object.map(MASQ_MAP_STATS)
        egressFD = try object.programFD(MASQ_PROG_EGRESS)
        ingressFD = try object.programFD(MASQ_PROG_INGRESS)
    }

    /// The usual node: IPv4 masquerading on, pod CIDR 10.0.1.0/24, the test device (ifindex 1)
    /// masquerading to 192.168.0.10, default port range.
    static func standard(flags: UInt32 = MASQ_CFG_IPV4_MASQ, portMin: UInt16 = 32768,
                         portMax: UInt16 = 65535, bytes: [UInt8] = EmbeddedDatapath.bytes) throws -> TestDatapath {
        let dp = try TestDatapath(bytes: bytes)
        try dp.setConfig(flags: flags, portMin: portMin, portMax: portMax)
        try dp.addDevice(snat: Net.snat)
        try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        return dp
    }

    func setConfig(flags: UInt32 = MASQ_CFG_IPV4_MASQ, portMin: UInt16 = 32768, portMax: UInt16 = 65535,
                   native: (PacketIPv4, UInt32)? = nil) throws {
        var cfg = masq_config()
        cfg.flags = flags | (native != nil ? MASQ_CFG_NATIVE_V4 : 0)
        cfg.port_min = portMin
        cfg.port_max = portMax
        if let native {
            cfg.native_v4 = native.0.raw
            cfg.native_v4_len = UInt16(native.1)
        }
        try config.update(UInt32(0), cfg)
        try advanceGeneration()
    }

    /// Moves masq_config.generation on, as masqd does after every change of the exclusion
    /// inputs (masq_abi.h), so that established flows decide their exclusions again.
    func advanceGeneration() throws {
        var cfg = try config.lookup(UInt32(0), as: masq_config.self) ?? masq_config()
        cfg.generation = cfg.generation == UInt16.max ? 1 : cfg.generation + 1
        try config.update(UInt32(0), cfg)
    }

    /// A masquerading device and its SNAT address, as masqd writes them; `l2HeaderLength` 0 is
    /// an L3 device (tun, WireGuard).
    func addDevice(ifindex: UInt32 = Net.testIfindex, snat: PacketIPv4, hasV4: Bool = true,
                   l2HeaderLength: UInt16 = 14) throws {
        var dev = masq_device()
        dev.snat_v4 = hasV4 ? snat.raw : 0
        dev.flags = hasV4 ? MASQ_DEV_HAS_V4 : 0
        dev.l2_hdr_len = l2HeaderLength
        try devices.update(ifindex, dev)
        if hasV4 { try object.map(MASQ_MAP_SNAT_V4).update(snat.raw, UInt8(MASQ_CIDR_PRESENT)) }
    }

    func addPodCIDR(_ addr: PacketIPv4, _ len: UInt32) throws {
        try pods.update(masq_lpm_v4(prefixlen: len, addr: addr.raw), UInt8(MASQ_CIDR_PRESENT))
        try advanceGeneration()
    }

    func addNonMasqCIDR(_ addr: PacketIPv4, _ len: UInt32) throws {
        try nonmasq.update(masq_lpm_v4(prefixlen: len, addr: addr.raw), UInt8(MASQ_CIDR_PRESENT))
        try advanceGeneration()
    }

    func addNode(_ addr: PacketIPv4) throws {
        try nodes.update(addr.raw, UInt8(MASQ_CIDR_PRESENT))
        try advanceGeneration()
    }

    enum Hook { case egress, ingress }

    /// Runs the program of `hook` once on `frame`.
    func run(_ hook: Hook, _ frame: [UInt8]) throws -> RunResult {
        var out = [UInt8](repeating: 0, count: frame.count + 256)
        var outLen = UInt32(out.count)
        var verdict: UInt32 = 0
        let fd = hook == .egress ? egressFD : ingressFD
        let err = frame.withUnsafeBytes { input in
            out.withUnsafeMutableBytes { output in
                masq_prog_test_run(fd, input.baseAddress, UInt32(input.count), output.baseAddress, &outLen,
                                   nil, 0, &verdict, 1, nil)
            }
        }
        if err != 0 { throw BPFError("test run", "program \(hook)", errno: -err) }
        return RunResult(verdict: verdict, frame: Array(out[0..<Int(outLen)]))
    }

    /// The kernel's average duration, in ns, of running `hook` on `frame`, over `runs` separate
    /// runs. Each run starts from the original bytes (BPF_PROG_TEST_RUN's `repeat` would feed
    /// the program its own rewritten packet), so a translated flow stays on its usual path.
    func averageCost(_ hook: Hook, _ frame: [UInt8], runs: Int) throws -> Double {
        try Self.averageCost(programFD: hook == .egress ? egressFD : ingressFD, frame, runs: runs)
    }

    /// averageCost(_:_:runs:) for any tc program: the benchmarks time a trivial one beside
    /// masq's, to show what the harness itself costs.
    static func averageCost(programFD fd: Int32, _ frame: [UInt8], runs: Int) throws -> Double {
        var out = [UInt8](repeating: 0, count: frame.count + 256)
        var verdict: UInt32 = 0
        var total: UInt64 = 0
        for _ in 0..<runs {
            var outLen = UInt32(out.count)
            var duration: UInt32 = 0
            let err = frame.withUnsafeBytes { input in
                out.withUnsafeMutableBytes { output in
                    masq_prog_test_run(fd, input.baseAddress, UInt32(input.count), output.baseAddress, &outLen,
                                       nil, 0, &verdict, 1, &duration)
                }
            }
            if err != 0 { throw BPFError("test run", "program fd \(fd)", errno: -err) }
            total += UInt64(duration)
        }
        return Double(total) / Double(runs)
    }

    /// Runs `hook` once on `frame` and returns the result with the kernel's run time in ns.
    func runTimed(_ hook: Hook, _ frame: [UInt8]) throws -> (RunResult, ns: UInt32) {
        var out = [UInt8](repeating: 0, count: frame.count + 256)
        var outLen = UInt32(out.count)
        var verdict: UInt32 = 0
        var duration: UInt32 = 0
        let fd = hook == .egress ? egressFD : ingressFD
        let err = frame.withUnsafeBytes { input in
            out.withUnsafeMutableBytes { output in
                masq_prog_test_run(fd, input.baseAddress, UInt32(input.count), output.baseAddress, &outLen,
                                   nil, 0, &verdict, 1, &duration)
            }
        }
        if err != 0 { throw BPFError("test run", "program \(hook)", errno: -err) }
        return (RunResult(verdict: verdict, frame: Array(out[0..<Int(outLen)])), duration)
    }

    // MARK: Reading state back

    func entry(_ key: masq_nat_key_v4) throws -> masq_nat_entry_v4? {
        try nat.lookup(key, as: masq_nat_entry_v4.self)
    }

    /// Moves the entry's last_seen `seconds` into the past, as if its flow had been quiet that
    /// long: the next packet then stores last_seen and checks the reply entry (MASQ_CT_REFRESH_NS).
    func age(_ key: masq_nat_key_v4, milliseconds: UInt64 = 2000) throws {
        guard var entry = try entry(key) else { throw BPFError("age", "no entry \(key.description)", errno: ENOENT) }
        entry.last_seen -= milliseconds * 1_000_000
        try nat.update(key, entry)
    }

    func entries() throws -> [(masq_nat_key_v4, masq_nat_entry_v4)] {
        try nat.entries(key: masq_nat_key_v4.self, value: masq_nat_entry_v4.self)
    }

    /// A counter of masq_stats, summed over CPUs.
    func stat(_ index: masq_stat) throws -> UInt64 {
        try stats.lookupPerCPU(index.rawValue, as: UInt64.self).reduce(0, +)
    }

    /// Packets dropped for `reason`, summed over CPUs.
    func dropped(_ reason: masq_drop_reason) throws -> UInt64 {
        try dropped(code: reason.rawValue)
    }

    private func dropped(code: UInt32) throws -> UInt64 {
        try drops.lookupPerCPU(code, as: UInt64.self).reduce(0, +)
    }

    /// Every drop, any reason.
    func droppedTotal() throws -> UInt64 {
        try DropReason.all.reduce(0) { try $0 + dropped(code: $1.code) }
    }
}

/// A NAT table key as the datapath writes it.
func natKey(_ saddr: PacketIPv4, _ daddr: PacketIPv4, sport: UInt16, dport: UInt16, proto: UInt8,
            dir: Int32) -> masq_nat_key_v4 {
    masq_nat_key_v4(saddr: saddr.raw, daddr: daddr.raw, sport: be16(sport), dport: be16(dport),
                    proto: proto, dir: UInt8(dir), pad: 0)
}

extension masq_nat_key_v4 {
    var description: String {
        "\(PacketIPv4(raw: saddr)):\(host16(sport)) -> \(PacketIPv4(raw: daddr)):\(host16(dport)) proto \(proto) dir \(dir)"
    }
}

// MARK: - ICMP errors

extension ICMPType {
    static let timeExceeded: UInt8 = 11
}

/// Builds an ICMP error from `src` to `dst` quoting the IPv4 packet of `offending` (an Ethernet
/// frame from `ipv4Frame`), cut to `quote` bytes of it when given (RFC 792: header + 8 bytes at
/// least). Bytes 4-7 of the ICMP header hold `mtu` (fragmentation needed) or zeros.
func icmpErrorFrame(src: PacketIPv4, dst: PacketIPv4, type: UInt8, code: UInt8, mtu: UInt16 = 0,
                    quoting offending: [UInt8], quote: Int? = nil) -> [UInt8] {
    var inner = Array(offending[14...])
    if let quote { inner = Array(inner.prefix(quote)) }
    return ipv4Frame(src: src, dst: dst, .icmp(type: type, code: code, body: [0, 0] + be(mtu) + inner), payload: [])
}

/// An ICMP error as the program left it: the outer packet, then the quoted packet, with every
/// checksum recomputed from scratch.
struct ParsedICMPError {
    var outer: ParsedFrame
    var type: UInt8
    var code: UInt8
    /// Bytes 6-7 of the ICMP header: the next-hop MTU of "fragmentation needed".
    var mtu: UInt16
    var innerSrc: PacketIPv4
    var innerDst: PacketIPv4
    var innerProto: UInt8
    /// TCP/UDP ports; for a quoted echo, its id in both.
    var innerSport: UInt16
    var innerDport: UInt16
    var innerIPChecksumOK: Bool
    /// The quoted L4 checksum verifies over the quoted L4 bytes (nil when the quote is cut
    /// short of the quoted datagram, so that it cannot be verified).
    var innerL4ChecksumOK: Bool?
    var innerL4Checksum: UInt16

    init(_ frame: [UInt8]) {
        outer = ParsedFrame(frame)
        let ip = Array(frame[14...])
        let icmp = Array(ip[outer.ihl * 4..<Int(ip.u16(at: 2))])
        type = icmp[0]
        code = icmp[1]
        mtu = icmp.u16(at: 6)
        let inner = Array(icmp[8...])
        let hlen = Int(inner[0] & 0x0f) * 4
        innerSrc = PacketIPv4(Array(inner[12..<16]))
        innerDst = PacketIPv4(Array(inner[16..<20]))
        innerProto = inner[9]
        innerIPChecksumOK = onesComplementSum(Array(inner[0..<hlen])) == 0xffff
        let l4 = Array(inner[hlen...])
        let complete = inner.count >= Int(inner.u16(at: 2))
        switch innerProto {
        case Proto.icmp:
            innerSport = l4.u16(at: 4)
            innerDport = innerSport
            innerL4Checksum = l4.u16(at: 2)
            innerL4ChecksumOK = complete ? onesComplementSum(l4) == 0xffff : nil
        default:
            innerSport = l4.u16(at: 0)
            innerDport = l4.u16(at: 2)
            let csumOff = innerProto == Proto.tcp ? 16 : 6
            innerL4Checksum = l4.count >= csumOff + 2 ? l4.u16(at: csumOff) : 0
            if innerProto == Proto.udp && innerL4Checksum == 0 {
                innerL4ChecksumOK = true
            } else if complete {
                let sum = onesComplementSum(l4, initial: pseudoHeaderSum(src: innerSrc.octets, dst: innerDst.octets,
                                                                          proto: innerProto, length: l4.count))
                innerL4ChecksumOK = sum == 0xffff
            } else {
                innerL4ChecksumOK = nil
            }
        }
    }

    /// Outer IPv4, ICMP, quoted IPv4 and (when verifiable) quoted L4 checksums all verify.
    var checksumsOK: Bool { outer.checksumsOK && innerIPChecksumOK && innerL4ChecksumOK != false }
}

// MARK: - Fragments

/// Splits the IPv4 datagram of `frame` (from `ipv4Frame`, no options) into fragments carrying
/// `chunk` bytes of its L4 part each (a multiple of 8, except the last), in order.
func fragment(_ frame: [UInt8], chunk: Int) -> [[UInt8]] {
    precondition(chunk % 8 == 0)
    let ip = Array(frame[14..<34])
    let data = Array(frame[34...])
    var frames: [[UInt8]] = []
    var offset = 0
    while offset < data.count {
        let part = Array(data[offset..<min(offset + chunk, data.count)])
        let more = offset + part.count < data.count
        var hdr = ip
        hdr.replace(at: 2, with: be(UInt16(20 + part.count)))
        hdr.replace(at: 6, with: be((more ? 0x2000 : 0) | UInt16(offset / 8)))
        hdr.replace(at: 10, with: [0, 0])
        hdr.replace(at: 10, with: be(internetChecksum(hdr)))
        frames.append(Array(frame[0..<14]) + hdr + part)
        offset += part.count
    }
    return frames
}

/// A fragment as the program left it.
struct ParsedFragment {
    var src: PacketIPv4
    var dst: PacketIPv4
    var id: UInt16
    /// Fragment offset in bytes.
    var offset: Int
    var more: Bool
    var ipChecksumOK: Bool
    var data: [UInt8]

    init(_ frame: [UInt8]) {
        let ip = Array(frame[14...])
        src = PacketIPv4(Array(ip[12..<16]))
        dst = PacketIPv4(Array(ip[16..<20]))
        id = ip.u16(at: 4)
        let frag = ip.u16(at: 6)
        offset = Int(frag & 0x1fff) * 8
        more = frag & 0x2000 != 0
        ipChecksumOK = onesComplementSum(Array(ip[0..<20])) == 0xffff
        data = Array(ip[20..<Int(ip.u16(at: 2))])
    }
}

/// Reassembles fragments (any order) into the datagram's L4 bytes; nil when one is missing.
func reassemble(_ fragments: [ParsedFragment]) -> [UInt8]? {
    var data: [UInt8] = []
    for f in fragments.sorted(by: { $0.offset < $1.offset }) {
        guard f.offset == data.count else { return nil }
        data += f.data
    }
    return fragments.contains { !$0.more } ? data : nil
}

extension TestDatapath {
    /// The masq_frag_v4 entry under `key`.
    func frag(_ key: masq_frag_key_v4) throws -> masq_frag_entry_v4? {
        try object.map(MASQ_MAP_FRAG_V4).lookup(key, as: masq_frag_entry_v4.self)
    }

    /// masq_alloc_hist summed over CPUs, bucket by bucket.
    func allocHistogram() throws -> [UInt64] {
        let hist = try object.map(MASQ_MAP_ALLOC_HIST)
        return try (0..<UInt32(MASQ_ALLOC_HIST_BUCKETS)).map {
            try hist.lookupPerCPU($0, as: UInt64.self).reduce(0, +)
        }
    }

    /// The masq_sat_v4 figure of (SNAT address, remote, remote port, proto).
    func saturation(remote: PacketIPv4, port: UInt16, proto: UInt8) throws -> masq_sat_entry_v4? {
        let key = masq_sat_key_v4(snat: Net.snat.raw, remote: remote.raw, remote_port: be16(port), proto: proto, pad: 0)
        return try object.map(MASQ_MAP_SAT_V4).lookup(key, as: masq_sat_entry_v4.self)
    }

    /// Fills the reply tuples (remote:rport -> SNAT address:port) of every port of `ports`
    /// directly in the map, as if other pods' flows held them.
    func holdPorts(_ ports: some Sequence<UInt16>, remote: PacketIPv4, remotePort: UInt16, proto: UInt8) throws {
        var held = masq_nat_entry_v4()
        held.to_addr = Net.pod2.raw
        for port in ports {
            held.to_port = be16(port)
            try nat.update(natKey(remote, Net.snat, sport: remotePort, dport: port, proto: proto, dir: MASQ_DIR_INGRESS), held)
        }
    }
}
