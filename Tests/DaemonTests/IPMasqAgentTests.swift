import API
import Foundation
import NetworkTypes
@testable import Daemon
import Testing

@Suite("ip-masq-agent config")
struct IPMasqAgentTests {
    private func parse(_ text: String) throws(IPMasqAgentError) -> IPMasqAgentConfig {
        try IPMasqAgentConfig.parse(text, path: "/etc/config/ip-masq-agent")
    }

    private func error(_ text: String) -> IPMasqAgentError? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return error
        }
    }

    private let defaults = [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
        "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
        "240.0.0.0/4",
    ]

    @Test("an empty file gives the 11 default ranges plus both link-local ranges")
    func emptyFile() throws {
        for text in ["", "\n", "# comment only\n", "{}", "nonMasqueradeCIDRs: []\n", "nonMasqueradeCIDRs:\n"] {
            #expect(try parse(text).effectiveList.cidrs.map(\.description) == defaults + ["169.254.0.0/16", "fe80::/10"], "\(text)")
        }
    }

    @Test("a YAML file's CIDRs replace the defaults; link-local stays excluded unless masqLinkLocal")
    func yamlFile() throws {
        let c = try parse("""
            nonMasqueradeCIDRs:
              - 10.0.0.0/8
              - 100.0.9.0/24
            masqLinkLocal: true
            """)
        #expect(c.effectiveList.cidrs.map(\.description) == ["10.0.0.0/8", "100.0.9.0/24", "fe80::/10"])
    }

    @Test("a JSON file is read the same way, and unknown keys are accepted and named")
    func jsonFile() throws {
        let c = try parse(#"{"nonMasqueradeCIDRs": ["192.168.0.0/16", "fd00::/8"], "masqLinkLocalIPv6": true, "resyncInterval": "60s", "cidrLimit": 64}"#)
        #expect(c.effectiveList.cidrs.map(\.description) == ["192.168.0.0/16", "fd00::/8", "169.254.0.0/16"])
        #expect(c.ignoredKeys == ["resyncInterval", "cidrLimit"])
    }

    @Test("keys match in any case, as Go's encoding/json matches them; y and n are booleans, as go-yaml reads them")
    func keyCaseAndShortBooleans() throws {
        let c = try parse("nonMasqueradeCidrs: [11.0.0.0/8]\nMASQLINKLOCAL: Y\nmasqlinklocalipv6: n\n")
        #expect(c.effectiveList.cidrs.map(\.description) == ["11.0.0.0/8", "fe80::/10"])
        #expect(c.ignoredKeys.isEmpty)
    }

    @Test("CIDRs are normalised and duplicates dropped")
    func normalised() throws {
        let c = try parse("nonMasqueradeCIDRs: [\"10.0.0.0/8\", 10.0.0.0/8, \"FD00::/8\", 169.254.0.0/16]\n")
        #expect(c.effectiveList.cidrs.map(\.description) == ["10.0.0.0/8", "fd00::/8", "169.254.0.0/16", "fe80::/10"])
    }

    @Test("every invalid file is an error with the file, the line and what is wrong")
    func invalid() {
        let cases: [(String, Int?, String)] = [
            ("nonMasqueradeCIDRs: [10.0.0.0/8\n", nil, ""),
            ("nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 10.1.1.1/8\n", 3, "nonMasqueradeCIDRs[1]: '10.1.1.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
            ("nonMasqueradeCIDRs:\n  - banana\n", 2, "nonMasqueradeCIDRs[0]: 'banana' is not a CIDR"),
            ("nonMasqueradeCIDRs: 10.0.0.0/8\n", 1, "nonMasqueradeCIDRs must be a list of CIDRs"),
            ("nonMasqueradeCIDRs:\n  - {a: b}\n", 2, "nonMasqueradeCIDRs[0] must be a CIDR string"),
            ("masqLinkLocal: maybe\n", 1, "masqLinkLocal must be true or false"),
            ("masqLinkLocalIPv6: [true]\n", 1, "masqLinkLocalIPv6 must be true or false"),
            // A string is not a boolean, as Cilium's decoding has it: quoted, in YAML or JSON.
            ("masqLinkLocal: \"yes\"\n", 1, "masqLinkLocal must be true or false"),
            (#"{"masqLinkLocal": "false"}"#, 1, "masqLinkLocal must be true or false"),
            // An address is not a CIDR (net.ParseCIDR refuses it).
            ("nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 100.0.0.2\n", 3, "nonMasqueradeCIDRs[1]: '100.0.0.2' is an address, not a CIDR (write 100.0.0.2/32)"),
            ("- 10.0.0.0/8\n", 1, "expected a mapping"),
        ]
        for (text, line, message) in cases {
            let e = error(text)
            #expect(e != nil, "\(text) was accepted")
            #expect(e?.path == "/etc/config/ip-masq-agent")
            if let line { #expect(e?.line == line, "\(text): line \(String(describing: e?.line))") }
            #expect(e?.message.hasPrefix(message) == true, "\(text): \(e?.message ?? "")")
        }
        #expect(error("nonMasqueradeCIDRs: [10.0.0.0/8\n")?.line != nil)
    }

    @Test("IPv6 CIDRs are part of the list with IPv6 masquerading on, and make the file invalid with it off; plain booleans in YAML 1.1's words are read")
    func ipv6CIDRs() throws {
        let text = "nonMasqueradeCIDRs: [10.0.0.0/8, fd00::/8, 2001:db8::/32]\nmasqLinkLocal: yes\n"
        let c = try parse(text)
        #expect(c.effectiveList.cidrs.map(\.description) == ["10.0.0.0/8", "fd00::/8", "2001:db8::/32", "fe80::/10"])
        do {
            _ = try IPMasqAgentConfig.parse(text, path: "f", ipv6Enabled: false)
            Issue.record("an IPv6 CIDR was accepted with IPv6 masquerading off")
        } catch {
            #expect(error.line == 1 && error.message == "nonMasqueradeCIDRs[1]: fd00::/8 is IPv6, and IPv6 masquerading is off (enable-ipv6-masquerade: false)")
        }
        #expect(try IPMasqAgentConfig.parse("nonMasqueradeCIDRs: [10.0.0.0/8]\n", path: "f", ipv6Enabled: false)
            .effectiveList.cidrs.count == 3)
    }

    @Test("the watcher reads the file again when a SIGHUP turns IPv6 masquerading on: the IPv6 CIDRs it refused apply then",
          .timeLimit(.minutes(1)))
    func ipv6SwitchRereads() async throws {
        let dir = "/tmp/masq-ipmasq-switch-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/ip-masq-agent"
        try "nonMasqueradeCIDRs: [10.0.0.0/8, fd00::/8]\n".write(toFile: path, atomically: true, encoding: .utf8)
        let status = DaemonStatus()
        let (changes, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        var watcher = IPMasqAgentWatcher(path: path, enabledAtStart: true, ipv6AtStart: false, status: status,
                                         changes: sink, logger: .init(label: "daemontests"))
        watcher.loadAtStart(pinned: [])
        #expect(watcher.initial == IPMasqAgentConfig.defaults.effectiveList)
        #expect(status.snapshot.ipMasqAgent.lastError?.contains("is IPv6, and IPv6 masquerading is off") == true)
        let running = Task { [watcher] in try await watcher.run() }
        defer { running.cancel() }
        watcher.ipv6Switch.yield(true)
        var iterator = changes.makeAsyncIterator()
        guard case .nonMasquerade(let list)? = await iterator.next() else {
            Issue.record("no list after IPv6 was turned on")
            return
        }
        #expect(list.cidrs.map(\.description) == ["10.0.0.0/8", "fd00::/8", "169.254.0.0/16", "fe80::/10"])
        #expect(status.snapshot.ipMasqAgent.lastError == nil)
    }

    @Test("a file that cannot be read says why: a directory, not UTF-8")
    func unreadable() throws {
        let dir = "/tmp/masq-ipmasq-unreadable-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(IPMasqAgentWatcher.read(path: dir + "/sub").failure?.message == "cannot be read: is a directory")
        #expect(FileManager.default.createFile(atPath: dir + "/latin1", contents: Data([0x6e, 0x6f, 0xe9, 0x0a])))
        #expect(IPMasqAgentWatcher.read(path: dir + "/latin1").failure?.message == "cannot be read: is not UTF-8 text")
        do {
            _ = try ConfigFile.load(path: dir + "/sub")
            Issue.record("a directory was read as the config file")
        } catch {
            #expect(error.errors.first?.description.hasSuffix("cannot be read (is a directory)") == true, "\(error)")
        }
    }

    @Test("an invalid file at start keeps the pinned list, or puts the defaults in force when none is pinned")
    func invalidAtStart() throws {
        let path = "/tmp/masq-ipmasq-start-\(getpid())"
        defer { unlink(path) }
        try "nonMasqueradeCIDRs: [8.8.8.0/24\n".write(toFile: path, atomically: true, encoding: .utf8)
        let status = DaemonStatus()
        let (_, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        var watcher = IPMasqAgentWatcher(path: path, enabledAtStart: true, status: status, changes: sink,
                                         logger: .init(label: "daemontests"))
        watcher.loadAtStart(pinned: [])
        #expect(watcher.initial == IPMasqAgentConfig.defaults.effectiveList)
        #expect(watcher.initial?.cidrs.count == 13)
        #expect(status.snapshot.ipMasqAgent.cidrs == watcher.initial?.cidrs)
        #expect(status.snapshot.ipMasqAgent.lastError?.hasPrefix("\(path):") == true)
        #expect(status.snapshot.ipMasqAgent.origin == .defaults)

        let pinned = [try IPPrefix("8.8.4.0/24")]
        watcher.loadAtStart(pinned: pinned)
        #expect(watcher.initial == NonMasqueradeList(cidrs: pinned))
        #expect(status.snapshot.ipMasqAgent.origin == .pinned)

        try "nonMasqueradeCIDRs: [8.8.8.0/24]\n".write(toFile: path, atomically: true, encoding: .utf8)
        watcher.loadAtStart(pinned: pinned)
        #expect(watcher.initial?.cidrs.first == (try IPPrefix("8.8.8.0/24")))
        #expect(status.snapshot.ipMasqAgent.lastError == nil)
        #expect(status.snapshot.ipMasqAgent.origin == .file)
    }

    @Test("a missing file reads as the defaults")
    func missingFile() throws {
        let result = IPMasqAgentWatcher.read(path: "/nonexistent/masq-test/ip-masq-agent")
        #expect(try result.get() == .defaults)
    }
}

@Suite("Config reload")
struct ConfigReloadTests {
    @Test("a reload applies live keys and keeps restart-only keys, naming them")
    func merge() throws {
        var running = DaemonConfig()
        running.podCIDRs = [try IPPrefix("10.244.0.0/16")]
        var new = running
        new.podCIDRs = [try IPPrefix("10.245.0.0/16")]
        new.clusterNodeIPs = [.v4(IPv4Address(10, 0, 0, 2))]
        new.enableIPMasqAgent = true
        new.natMaxEntries = 65536
        new.bpffsRoot = "/sys/fs/bpf/other"
        let (merged, pending) = ConfigReloader.merge(running: running, new: new)
        #expect(merged.podCIDRs == new.podCIDRs && merged.clusterNodeIPs == new.clusterNodeIPs && merged.enableIPMasqAgent)
        #expect(merged.natMaxEntries == running.natMaxEntries && merged.bpffsRoot == running.bpffsRoot)
        #expect(Set(pending) == [.natMaxEntries, .bpffsRoot])
    }

    @Test("both family switches apply on reload, either way")
    func familySwitches() {
        let running = DaemonConfig()
        for (v4, v6) in [(false, true), (true, false), (false, false)] {
            var new = running
            new.enableIPv4Masquerade = v4
            new.enableIPv6Masquerade = v6
            let (merged, pending) = ConfigReloader.merge(running: running, new: new)
            #expect(merged.enableIPv4Masquerade == v4 && merged.enableIPv6Masquerade == v6)
            #expect(pending.isEmpty)
            let (back, _) = ConfigReloader.merge(running: merged, new: running)
            #expect(back.enableIPv4Masquerade && back.enableIPv6Masquerade)
        }
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
