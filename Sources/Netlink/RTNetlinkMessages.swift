@preconcurrency import Glibc
import CMasq
import NetworkTypes

#if _endian(big)
#error("netlink headers are read as little-endian host order")
#endif

/// The rtnetlink ABI numbers masq uses, typed as the messages carry them. The values come from
/// the kernel's uapi headers (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_addr.h`,
/// `linux/if_link.h`) through CMasq.
enum RTNL {
    // linux/netlink.h
    static let netlinkRoute = Int32(NETLINK_ROUTE)
    static let solNetlink = Int32(SOL_NETLINK)
    static let extAck = Int32(NETLINK_EXT_ACK)
    static let flagRequest = UInt16(NLM_F_REQUEST)
    static let flagMulti = UInt16(NLM_F_MULTI)
    /// The dump raced a change.
    static let flagDumpInterrupted = UInt16(NLM_F_DUMP_INTR)
    static let flagDump = UInt16(NLM_F_DUMP)
    static let messageError = UInt16(NLMSG_ERROR)
    static let messageDone = UInt16(NLMSG_DONE)
    static let messageOverrun = UInt16(NLMSG_OVERRUN)
    /// Netlink messages and attributes are padded to 4 bytes (NLMSG_ALIGNTO, RTA_ALIGNTO).
    static let alignment = Int(NLMSG_ALIGNTO)
    static let headerSize = MemoryLayout<nlmsghdr>.size
    /// Attribute type bits that are the type, not flags (NLA_TYPE_MASK).
    static let attributeTypeMask = ~UInt16(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

    // linux/rtnetlink.h: message types
    static let newLink = UInt16(RTM_NEWLINK), delLink = UInt16(RTM_DELLINK), getLink = UInt16(RTM_GETLINK)
    static let newAddress = UInt16(RTM_NEWADDR), delAddress = UInt16(RTM_DELADDR), getAddress = UInt16(RTM_GETADDR)
    static let newRoute = UInt16(RTM_NEWROUTE), delRoute = UInt16(RTM_DELROUTE), getRoute = UInt16(RTM_GETROUTE)

    // linux/rtnetlink.h: multicast groups, as bits for bind(2)
    static let groupLink = UInt32(RTMGRP_LINK)
    static let groupIPv4Address = UInt32(RTMGRP_IPV4_IFADDR)
    static let groupIPv4Route = UInt32(RTMGRP_IPV4_ROUTE)
    static let groupIPv6Address = UInt32(RTMGRP_IPV6_IFADDR)
    static let groupIPv6Route = UInt32(RTMGRP_IPV6_ROUTE)

    // Fixed headers after nlmsghdr.
    static let ifinfomsgSize = MemoryLayout<ifinfomsg>.size
    static let ifaddrmsgSize = MemoryLayout<ifaddrmsg>.size
    static let rtmsgSize = MemoryLayout<rtmsg>.size
    static let rtnexthopSize = MemoryLayout<rtnexthop>.size

    // linux/if_link.h
    static let linkName = UInt16(IFLA_IFNAME)
    /// Nested; IFLA_INFO_KIND inside it names the driver ("veth", "tun").
    static let linkInfo = UInt16(IFLA_LINKINFO)
    static let linkInfoKind = UInt16(IFLA_INFO_KIND)

    // linux/if_addr.h
    /// The peer on point-to-point links.
    static let addressAddress = UInt16(IFA_ADDRESS)
    /// The local address, when present.
    static let addressLocal = UInt16(IFA_LOCAL)
    /// A u32 that extends ifa_flags.
    static let addressFlags = UInt16(IFA_FLAGS)
    /// IFA_F_SECONDARY for IPv4 is IFA_F_TEMPORARY for IPv6: the same bit.
    static let flagSecondary = UInt32(IFA_F_SECONDARY)
    static let flagDADFailed = UInt32(IFA_F_DADFAILED)
    static let flagDeprecated = UInt32(IFA_F_DEPRECATED)
    static let flagTentative = UInt32(IFA_F_TENTATIVE)

    // linux/rtnetlink.h: routes
    static let routeDestination = UInt16(RTA_DST.rawValue)
    static let routeSource = UInt16(RTA_SRC.rawValue)
    static let routeInputInterface = UInt16(RTA_IIF.rawValue)
    static let routeOutputInterface = UInt16(RTA_OIF.rawValue)
    static let routeGateway = UInt16(RTA_GATEWAY.rawValue)
    static let routePreferredSource = UInt16(RTA_PREFSRC.rawValue)
    /// An array of struct rtnexthop.
    static let routeMultipath = UInt16(RTA_MULTIPATH.rawValue)
    /// A u32, for table ids past 255.
    static let routeTable = UInt16(RTA_TABLE.rawValue)
    static let tableMain = UInt32(RT_TABLE_MAIN.rawValue)
    static let typeUnicast = UInt8(RTN_UNICAST)
    static let scopeLink = UInt8(RT_SCOPE_LINK.rawValue)
    static let scopeHost = UInt8(RT_SCOPE_HOST.rawValue)
}

/// A netlink failure: which step, and what the kernel or the message said.
public enum NetlinkError: Error, CustomStringConvertible, Equatable {
    /// A socket call failed.
    case system(step: String, errno: Int32)
    /// The kernel answered a request with an error.
    case kernel(request: String, errno: Int32)
    /// A message could not be parsed.
    case malformed(String)
    /// A dump raced a change (NLM_F_DUMP_INTR); the caller dumps again.
    case dumpInterrupted(request: String)

    public var description: String {
        switch self {
        case .system(let step, let errno):
            "netlink \(step): \(String(cString: strerror(errno))) (errno \(errno))"
        case .kernel(let request, let errno):
            "netlink \(request): the kernel answered \(String(cString: strerror(errno))) (errno \(errno))"
        case .malformed(let what):
            "netlink: malformed message: \(what)"
        case .dumpInterrupted(let request):
            "netlink \(request): the dump was interrupted by a concurrent change"
        }
    }
}

/// One netlink message: the header fields masq reads and the payload after the header.
struct NetlinkMessage: Equatable {
    var type: UInt16
    var flags: UInt16
    var sequence: UInt32
    var payload: ArraySlice<UInt8>

    /// Splits one datagram into its messages (several per datagram in dumps and bursts).
    static func parse(_ datagram: ArraySlice<UInt8>) throws(NetlinkError) -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = datagram.startIndex
        while datagram.endIndex - offset >= RTNL.headerSize {
            let length = Int(datagram.u32(at: offset))
            guard length >= RTNL.headerSize, length <= datagram.endIndex - offset else {
                throw .malformed("message length \(length) at offset \(offset - datagram.startIndex) of a \(datagram.count)-byte datagram")
            }
            messages.append(NetlinkMessage(
                type: datagram.u16(at: offset + 4),
                flags: datagram.u16(at: offset + 6),
                sequence: datagram.u32(at: offset + 8),
                payload: datagram[(offset + RTNL.headerSize)..<(offset + length)]))
            offset += align(length)
        }
        return messages
    }

    /// A request: the header followed by `body` (a zeroed family header for dumps).
    static func request(type: UInt16, flags: UInt16, sequence: UInt32, body: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLittle(UInt32(RTNL.headerSize + body.count))
        bytes.appendLittle(type)
        bytes.appendLittle(flags)
        bytes.appendLittle(sequence)
        bytes.appendLittle(UInt32(0)) // port id: the kernel fills it in
        return bytes + body
    }

    /// The errno of an NLMSG_ERROR message (0 is an acknowledgement), or of an NLMSG_DONE that
    /// ends a dump early.
    var errorCode: Int32 {
        payload.count >= 4 ? -Int32(bitPattern: payload.u32(at: payload.startIndex)) : 0
    }
}

/// The attributes (struct rtattr: length, type, value) that follow a fixed header, by type.
/// A later attribute of the same type wins, as the kernel never repeats the ones masq reads.
struct NetlinkAttributes {
    private var values: [UInt16: ArraySlice<UInt8>] = [:]

    init(_ bytes: ArraySlice<UInt8>) throws(NetlinkError) {
        var offset = bytes.startIndex
        while bytes.endIndex - offset >= 4 {
            let length = Int(bytes.u16(at: offset))
            guard length >= 4, length <= bytes.endIndex - offset else {
                throw .malformed("attribute length \(length) with \(bytes.endIndex - offset) bytes left")
            }
            let type = bytes.u16(at: offset + 2) & RTNL.attributeTypeMask
            values[type] = bytes[(offset + 4)..<(offset + length)]
            offset += align(length)
        }
    }

    subscript(type: UInt16) -> ArraySlice<UInt8>? { values[type] }

    func u32(_ type: UInt16) -> UInt32? {
        guard let v = values[type], v.count >= 4 else { return nil }
        return v.u32(at: v.startIndex)
    }

    /// A NUL-terminated string attribute.
    func string(_ type: UInt16) -> String? {
        guard let v = values[type] else { return nil }
        return String(decoding: v.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// RTM_NEWLINK / RTM_DELLINK: a device.
struct LinkMessage: Equatable, Sendable {
    var index: UInt32
    var name: String
    /// The device flags (IFF_UP, IFF_LOOPBACK, ...).
    var flags: UInt32
    /// The link layer: ifi_type (ARPHRD_*) and the driver kind from IFLA_LINKINFO.
    var linkLayer: LinkLayer

    init(index: UInt32, name: String, flags: UInt32, linkLayer: LinkLayer = .ethernet) {
        self.index = index
        self.name = name
        self.flags = flags
        self.linkLayer = linkLayer
    }

    init(_ message: NetlinkMessage) throws(NetlinkError) {
        let p = message.payload
        guard p.count >= RTNL.ifinfomsgSize else { throw .malformed("link message of \(p.count) bytes") }
        let type = p.u16(at: p.startIndex + 2) // ifi_type
        index = p.u32(at: p.startIndex + 4) // ifi_index is an int; ifindexes are positive
        flags = p.u32(at: p.startIndex + 8)
        let attributes = try NetlinkAttributes(p.dropFirst(RTNL.ifinfomsgSize))
        guard let name = attributes.string(RTNL.linkName) else {
            throw .malformed("link \(index) without a name")
        }
        self.name = name
        let driver = try attributes[RTNL.linkInfo].flatMap { info throws(NetlinkError) in
            try NetlinkAttributes(info).string(RTNL.linkInfoKind)
        }
        linkLayer = LinkLayer(type: type, driver: driver)
    }
}

/// RTM_NEWADDR / RTM_DELADDR: one address of a device.
struct AddressMessage: Equatable, Sendable {
    var index: UInt32
    var address: IPAddress
    var prefixLength: UInt8
    var scope: UInt8
    /// IFA_F_* flags: IFA_FLAGS when present (it extends the 8-bit header field).
    var flags: UInt32

    init(index: UInt32, address: IPAddress, prefixLength: UInt8, scope: UInt8 = 0, flags: UInt32 = 0) {
        self.index = index
        self.address = address
        self.prefixLength = prefixLength
        self.scope = scope
        self.flags = flags
    }

    /// nil for families other than IPv4 and IPv6.
    init?(_ message: NetlinkMessage) throws(NetlinkError) {
        let p = message.payload
        guard p.count >= RTNL.ifaddrmsgSize else { throw .malformed("address message of \(p.count) bytes") }
        let family = Int32(p[p.startIndex])
        prefixLength = p[p.startIndex + 1]
        scope = p[p.startIndex + 3]
        index = p.u32(at: p.startIndex + 4)
        let attributes = try NetlinkAttributes(p.dropFirst(RTNL.ifaddrmsgSize))
        flags = attributes.u32(RTNL.addressFlags) ?? UInt32(p[p.startIndex + 2])
        // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours when present.
        guard let raw = attributes[RTNL.addressLocal] ?? attributes[RTNL.addressAddress],
              family == AF_INET || family == AF_INET6 else { return nil }
        guard let parsed = IPAddress(family: family, raw: raw) else {
            throw .malformed("address of \(raw.count) bytes for family \(family)")
        }
        address = parsed
    }

    var isSecondary: Bool { flags & RTNL.flagSecondary != 0 }

    var isIPv4: Bool { address.bitWidth == 32 }

    var isGlobalUnicast: Bool {
        guard case .v6(let a) = address else { return false }
        return a.isGlobalUnicast
    }

    /// Whether new flows may leave with this address: global scope (not host or link), not
    /// deprecated, and for IPv6 neither tentative, failed duplicate detection nor temporary
    /// (privacy addresses rotate and are meant for the host's own outgoing connections).
    var isUsableSNATAddress: Bool {
        guard scope < RTNL.scopeLink, flags & RTNL.flagDeprecated == 0 else { return false }
        switch address {
        case .v4:
            return true
        case .v6(let a):
            let unusable = RTNL.flagTentative | RTNL.flagDADFailed | RTNL.flagSecondary
            let linkLocal = a.bytes[0] == 0xfe && a.bytes[1] & 0xc0 == 0x80
            return flags & unusable == 0 && !linkLocal
        }
    }
}

/// RTM_NEWROUTE / RTM_DELROUTE: the fields that tell whether a route is a default route,
/// through which devices it leaves, and the source the kernel gives its traffic.
struct RouteMessage: Equatable, Sendable {
    var destinationLength: UInt8
    var table: UInt32
    var type: UInt8
    /// RTA_OIF, or every nexthop's device of a multipath route.
    var outputInterfaces: [UInt32]
    /// RTA_GATEWAY by device: the route's, or each nexthop's of a multipath route (several
    /// nexthops may leave through one device).
    var gateways: [UInt32: [IPAddress]]
    /// RTA_PREFSRC (`ip route ... src ADDRESS`).
    var preferredSource: IPAddress?

    init(destinationLength: UInt8, table: UInt32 = RTNL.tableMain, type: UInt8 = RTNL.typeUnicast, outputInterfaces: [UInt32],
         gateways: [UInt32: [IPAddress]] = [:], preferredSource: IPAddress? = nil) {
        self.destinationLength = destinationLength
        self.table = table
        self.type = type
        self.outputInterfaces = outputInterfaces
        self.gateways = gateways
        self.preferredSource = preferredSource
    }

    init(_ message: NetlinkMessage) throws(NetlinkError) {
        let p = message.payload
        guard p.count >= RTNL.rtmsgSize else { throw .malformed("route message of \(p.count) bytes") }
        let family = Int32(p[p.startIndex])
        destinationLength = p[p.startIndex + 1]
        type = p[p.startIndex + 7]
        let attributes = try NetlinkAttributes(p.dropFirst(RTNL.rtmsgSize))
        table = attributes.u32(RTNL.routeTable) ?? UInt32(p[p.startIndex + 4])
        preferredSource = attributes[RTNL.routePreferredSource].flatMap { IPAddress(family: family, raw: $0) }
        outputInterfaces = []
        gateways = [:]
        if let oif = attributes.u32(RTNL.routeOutputInterface) {
            outputInterfaces.append(oif)
            if let gateway = attributes[RTNL.routeGateway].flatMap({ IPAddress(family: family, raw: $0) }) {
                gateways[oif] = [gateway]
            }
        }
        if let hops = attributes[RTNL.routeMultipath] {
            // struct rtnexthop { u16 len; u8 flags; u8 hops; int ifindex; } then its attributes.
            var offset = hops.startIndex
            while hops.endIndex - offset >= RTNL.rtnexthopSize {
                let length = Int(hops.u16(at: offset))
                guard length >= RTNL.rtnexthopSize, length <= hops.endIndex - offset else {
                    throw .malformed("nexthop length \(length) with \(hops.endIndex - offset) bytes left")
                }
                let oif = hops.u32(at: offset + 4)
                outputInterfaces.append(oif)
                let hop = try NetlinkAttributes(hops[(offset + RTNL.rtnexthopSize)..<(offset + length)])
                if let gateway = hop[RTNL.routeGateway].flatMap({ IPAddress(family: family, raw: $0) }) {
                    gateways[oif, default: []].append(gateway)
                }
                offset += align(length)
            }
        }
    }

    /// A unicast default route of the main table (what `ip route` shows as `default`).
    var isMainDefault: Bool {
        destinationLength == 0 && table == RTNL.tableMain && type == RTNL.typeUnicast
    }
}

extension IPAddress {
    /// An address attribute's bytes; nil for another family or length.
    init?(family: Int32, raw: ArraySlice<UInt8>) {
        switch family {
        case AF_INET where raw.count == 4:
            self = .v4(IPv4Address(raw[raw.startIndex], raw[raw.startIndex + 1], raw[raw.startIndex + 2], raw[raw.startIndex + 3]))
        case AF_INET6 where raw.count == 16:
            self = .v6(IPv6Address(bytes: Array(raw)))
        default:
            return nil
        }
    }
}

/// Rounds a netlink length up to the 4-byte alignment of messages and attributes.
func align(_ length: Int) -> Int {
    (length + RTNL.alignment - 1) & ~(RTNL.alignment - 1)
}

// Netlink headers are in host byte order; masq runs on little-endian machines (x86_64, arm64).
extension ArraySlice<UInt8> {
    func u16(at i: Int) -> UInt16 {
        UInt16(self[i]) | UInt16(self[i + 1]) << 8
    }

    func u32(at i: Int) -> UInt32 {
        UInt32(self[i]) | UInt32(self[i + 1]) << 8 | UInt32(self[i + 2]) << 16 | UInt32(self[i + 3]) << 24
    }
}

extension [UInt8] {
    mutating func appendLittle<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// A netlink attribute: length, type, payload, padded to 4 bytes.
    mutating func appendAttribute(_ type: UInt16, _ payload: [UInt8]) {
        appendLittle(UInt16(4 + payload.count))
        appendLittle(type)
        append(contentsOf: payload)
        append(contentsOf: [UInt8](repeating: 0, count: (4 - payload.count % 4) % 4))
    }
}
