@preconcurrency import Glibc
import CLibbpf
import CMasq
import Foundation

/// A tc hook point of a device.
enum HookDirection: String, CaseIterable, Sendable {
    case ingress, egress

    var isIngress: Int32 { self == .ingress ? 1 : 0 }
}

/// A device where masq's program already runs from another bpffs-root: another masqd's, or one
/// left by a masqd that ran with another root.
public struct DeviceTaken: Error, CustomStringConvertible {
    public var device: String
    var direction: HookDirection
    public var programID: UInt32

    public var description: String {
        "device \(device): masq's \(direction.rawValue) program (id \(programID)) already runs there, attached by a masqd with another bpffs-root; stop that masqd, or take its datapath away with `masqd uninstall --bpffs-root <its root>`"
    }
}

/// Attaching masq's programs to devices and taking them off again, by tcx link or tc filter.
///
/// tcx links are pinned under `<bpffs-root>/links/` so they outlive the daemon; a restarted
/// daemon swaps its freshly loaded program into the existing link (atomic, no gap). tc filters
/// live at a fixed handle and priority in the clsact qdisc and are replaced in place. Only
/// masq's own filter is ever removed: the qdisc and other filters stay.
struct Attachments {
    /// tc filter handle and priority reserved for masq ("mq").
    static let tcHandle: UInt32 = 0x6d71
    static let tcPriority: UInt32 = 0x6d71

    let root: String

    var linksDir: String { root + "/links" }

    func linkPin(ifindex: UInt32, _ direction: HookDirection) -> String {
        "\(linksDir)/tcx_\(ifindex)_\(direction.rawValue)"
    }

    /// Whether this kernel has tcx, probed with the program that would be attached.
    static func tcxSupported(progFD: Int32) -> Bool {
        masq_tcx_supported(progFD) == 1
    }

    /// Attaches `progFD` at `direction` of `ifindex` by a pinned tcx link, reusing the link a
    /// previous daemon pinned. Removes a tc filter of masq's left from a tc-mode run.
    func attachTCX(progFD: Int32, ifindex: UInt32, _ direction: HookDirection, device: String) throws {
        let pin = linkPin(ifindex: ifindex, direction)
        let existing = bpf_obj_get(pin)
        if existing >= 0 {
            defer { close(existing) }
            // A link pinned earlier: any tc filter of a tc-mode run was removed when it was made.
            if bpf_link_update(existing, progFD, nil) == 0 { return }
            // The device went away under the link (ENOLINK) or the pin is stale: start over.
            unlink(pin)
        }
        if let taken = try otherRootsProgram(ifindex: ifindex, direction, device: device) { throw taken }
        try FileManager.default.createDirectory(atPath: linksDir, withIntermediateDirectories: true)
        let fd = masq_tcx_link_create(progFD, Int32(ifindex), direction.isIngress)
        guard fd >= 0 else { throw BPFError("attach tcx \(direction.rawValue)", "device \(device)", errno: -fd) }
        defer { close(fd) }
        guard bpf_obj_pin(fd, pin) == 0 else {
            throw BPFError("pin tcx link", pin, errno: errno)
        }
        detachTC(ifindex: ifindex, direction)
    }

    /// Whether another bpffs-root's masq programs run on `ifindex` (tcx), as `attachTCX` would
    /// find: a direction without a link pinned by this root that runs a masq program.
    func taken(ifindex: UInt32, device: String) throws -> DeviceTaken? {
        for direction in HookDirection.allCases where access(linkPin(ifindex: ifindex, direction), F_OK) != 0 {
            if let taken = try otherRootsProgram(ifindex: ifindex, direction, device: device) { return taken }
        }
        return nil
    }

    /// The masq program at `direction` of `ifindex`, where this root has no link: another
    /// masqd's (another bpffs-root), which would translate the device's packets beside ours.
    private func otherRootsProgram(ifindex: UInt32, _ direction: HookDirection, device: String) throws -> DeviceTaken? {
        var other: UInt32 = 0
        let err = masq_tcx_find_named(Int32(ifindex), direction.isIngress, "masq_\(direction.rawValue)", &other)
        guard err == 0 else { throw BPFError("query tcx \(direction.rawValue)", "device \(device)", errno: -err) }
        return other == 0 ? nil : DeviceTaken(device: device, direction: direction, programID: other)
    }

    /// Attaches `progFD` by a tc clsact filter (replacing masq's previous one) and removes a
    /// tcx link left from a tcx-mode run.
    func attachTC(progFD: Int32, ifindex: UInt32, _ direction: HookDirection, device: String) throws {
        var created: Int32 = 0
        let err = masq_tc_attach(progFD, Int32(ifindex), direction.isIngress, Self.tcHandle, Self.tcPriority, &created)
        guard err == 0 else { throw BPFError("attach tc \(direction.rawValue)", "device \(device)", errno: -err) }
        unlink(linkPin(ifindex: ifindex, direction))
    }

    /// Removes masq's tc filter, if any. Returns whether there was one.
    @discardableResult
    func detachTC(ifindex: UInt32, _ direction: HookDirection) -> Bool {
        var progID: UInt32 = 0
        guard masq_tc_query(Int32(ifindex), direction.isIngress, Self.tcHandle, Self.tcPriority, &progID) == 0 else { return false }
        return masq_tc_detach(Int32(ifindex), direction.isIngress, Self.tcHandle, Self.tcPriority) == 0
    }

    /// Whether the program `progID` runs at `direction` of `ifindex`, attached the way `mode`
    /// attaches it: something else may have taken it off (a deleted clsact qdisc, a removed
    /// link pin).
    func isAttached(progID: UInt32, ifindex: UInt32, _ direction: HookDirection, mode: AttachKind) throws -> Bool {
        switch mode {
        case .tcx:
            let found = masq_tcx_attached(Int32(ifindex), direction.isIngress, progID)
            guard found >= 0 else { throw BPFError("query tcx \(direction.rawValue)", "ifindex \(ifindex)", errno: -found) }
            return found == 1
        case .tc:
            var attached: UInt32 = 0
            let err = masq_tc_query(Int32(ifindex), direction.isIngress, Self.tcHandle, Self.tcPriority, &attached)
            guard err == 0 || err == -ENOENT || err == -EINVAL else {
                throw BPFError("query tc \(direction.rawValue)", "ifindex \(ifindex)", errno: -err)
            }
            return err == 0 && attached == progID
        }
    }

    /// Takes masq's programs off `ifindex` in both directions, whichever way they were attached.
    /// Unpinning a tcx link with no other holder destroys it, which detaches it. Returns how
    /// they were attached (empty: nothing was found).
    @discardableResult
    func detachAll(ifindex: UInt32) -> Set<AttachKind> {
        var found = Set<AttachKind>()
        for direction in HookDirection.allCases {
            if unlink(linkPin(ifindex: ifindex, direction)) == 0 { found.insert(.tcx) }
            if detachTC(ifindex: ifindex, direction) { found.insert(.tc) }
        }
        return found
    }

    /// The ifindexes that have a pinned tcx link.
    func pinnedLinkIfindexes() -> Set<UInt32> {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: linksDir)) ?? []
        return Set(names.compactMap { name in
            let parts = name.split(separator: "_")
            return parts.count == 3 && parts[0] == "tcx" ? UInt32(parts[1]) : nil
        })
    }
}
