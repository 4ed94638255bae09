/// A device's link layer, as rtnetlink reports it: its ARPHRD_* type (ifinfomsg.ifi_type) and
/// its driver (IFLA_INFO_KIND). The datapath needs one thing from it: how many bytes come
/// before the L3 header when masq's tc programs see a packet. Ethernet devices carry a 14-byte
/// header; L3 devices (tun, WireGuard, ipip, GRE, ppp) carry none, so their packets start at
/// the IPv4 header (as Cilium runs its programs there with an L2 header length of 0).
public struct LinkLayer: Equatable, Sendable {
    /// ARPHRD_* (linux/if_arp.h).
    public var type: UInt16
    /// The driver kind ("veth", "tun", "wireguard", "vlan"); nil for a device without one
    /// (a physical NIC).
    public var driver: String?

    public init(type: UInt16, driver: String? = nil) {
        self.type = type
        self.driver = driver
    }

    public static let ethernet = LinkLayer(type: ARPHRD.ether)

    /// ARPHRD_* numbers (linux/if_arp.h): kernel ABI, never renumbered.
    enum ARPHRD {
        static let ether: UInt16 = 1
        static let ppp: UInt16 = 512
        static let rawIP: UInt16 = 519
        static let tunnel: UInt16 = 768 // ipip
        static let tunnel6: UInt16 = 769 // ip6tnl
        static let sit: UInt16 = 776
        static let ipGRE: UInt16 = 778
        static let loopback: UInt16 = 772
        static let ip6GRE: UInt16 = 823
        static let none: UInt16 = 0xfffe // tun (IFF_TUN), WireGuard
    }

    /// The name iproute2 shows after `link/`, for the link types masq knows.
    private static let names: [UInt16: String] = [
        ARPHRD.ether: "ether", ARPHRD.ppp: "ppp", ARPHRD.rawIP: "rawip", ARPHRD.tunnel: "ipip",
        ARPHRD.tunnel6: "tunnel6", ARPHRD.sit: "sit", ARPHRD.ipGRE: "gre", ARPHRD.loopback: "loopback",
        ARPHRD.ip6GRE: "gre6", ARPHRD.none: "none",
    ]

    /// Bytes before the L3 header at tc (ingress and egress), or nil for a link type masq does
    /// not know (InfiniBand, IEEE 802.15.4, ...), where reading IPv4 at a guessed offset would
    /// corrupt packets.
    public var l2HeaderLength: UInt16? {
        switch type {
        case ARPHRD.ether: 14
        case ARPHRD.none, ARPHRD.ppp, ARPHRD.rawIP, ARPHRD.tunnel, ARPHRD.tunnel6, ARPHRD.sit,
             ARPHRD.ipGRE, ARPHRD.ip6GRE: 0
        default: nil
        }
    }

    /// What status shows: the link type, then the driver in parentheses ("ether(veth)",
    /// "none(tun)"); an unknown type by number ("arphrd-32").
    public var kind: String {
        let name = Self.names[type] ?? "arphrd-\(type)"
        return driver.map { "\(name)(\($0))" } ?? name
    }
}
