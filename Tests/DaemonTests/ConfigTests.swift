import API
import Foundation
import NetworkTypes
@testable import Daemon
@testable import Datapath
@testable import MasqdCLI
import Testing

@Suite("Daemon config")
struct ConfigTests {
    private func config(file: String = "", flags: [String] = []) throws -> DaemonConfig {
        let run = try MasqdCommand.Run.parse(flags)
        return try DaemonConfig(file: try ConfigFile.parse(file, path: "test.yaml"), flags: run.flagSettings())
    }

    private func problems(file: String = "", flags: [String] = []) -> [String] {
        do {
            _ = try config(file: file, flags: flags)
            return []
        } catch let error as ConfigErrors {
            return error.errors.map(\.description)
        } catch {
            return ["\(error)"]
        }
    }

    @Test("defaults match the spec when only pod-cidrs is given")
    func defaults() throws {
        let c = try config(flags: ["--pod-cidrs", "10.244.0.0/16"])
        #expect(c.enableIPv4Masquerade && c.enableIPv6Masquerade && !c.enableIPMasqAgent)
        #expect(c.snatPortRange == 32768...65535)
        #expect(c.natMaxEntries == 524_288)
        #expect(c.bpffsRoot == "/sys/fs/bpf/masq")
        #expect(c.socketPath == "/run/masq/masqd.sock")
        #expect(c.ipMasqAgentConfigPath == "/etc/config/ip-masq-agent")
        #expect(c.devices.isEmpty && c.clusterNodeIPs.isEmpty && c.attachMode == .auto)
        #expect(c.podCIDRs.map(\.description) == ["10.244.0.0/16"])
    }

    @Test("socket-group: empty in the file means unset; a group this system lacks is a config error, a number any gid")
    func socketGroup() throws {
        for line in ["socket-group:", "socket-group: \"\"", "socket-group: null"] {
            let c = try config(file: "pod-cidrs: [10.244.0.0/16]\n\(line)\n")
            #expect(c.socketGroup == nil, "\(line)")
        }
        #expect(try config(file: "pod-cidrs: [10.244.0.0/16]\nsocket-group: root\n").socketGroup == "root")
        #expect(try config(flags: ["--pod-cidrs", "10.0.0.0/8", "--socket-group", "64999"]).socketGroup == "64999")
        #expect(problems(flags: ["--pod-cidrs", "10.0.0.0/8", "--socket-group", "no-such-group-masq"])
            == ["socket-group: no group 'no-such-group-masq' on this system"])
    }

    @Test("every config key has a masqd run flag of the same name")
    func everyKeyHasAFlag() throws {
        let samples: [ConfigKey: String] = [
            .enableIPv4Masquerade: "false", .enableIPv6Masquerade: "false",
            .ipv4NativeRoutingCIDR: "10.0.0.0/8", .ipv6NativeRoutingCIDR: "fd00::/100",
            .podCIDRs: "10.244.0.0/16", .devices: "eth0", .enableIPMasqAgent: "true",
            .ipMasqAgentConfigPath: "/tmp/agent",
            .clusterNodeIPs: "10.1.0.1", .snatPortRange: "40000-50000", .natMaxEntries: "65536",
            .socketPath: "/tmp/masq.sock", .socketGroup: "root", .prometheusServeAddr: ":9962", .bpffsRoot: "/sys/fs/bpf/x",
            .logLevel: "debug", .attachMode: "tc",
            .conntrackTCPSynTimeout: "30s", .conntrackTCPEstablishedTimeout: "1h30m",
            .conntrackTCPFinWaitTimeout: "90s", .conntrackTCPCloseWaitTimeout: "45s",
            .conntrackTCPClosingTimeout: "5s", .conntrackUDPTimeout: "20", .conntrackUDPRepliedTimeout: "3m",
            .conntrackICMPTimeout: "15s", .conntrackGCInterval: "500ms",
        ]
        for key in ConfigKey.allCases {
            let sample = try #require(samples[key], "no sample for \(key.rawValue)")
            let run = try MasqdCommand.Run.parse(["--\(key.rawValue)", sample])
            #expect(run.flagSettings()[key] == .scalar(sample), "flag --\(key.rawValue) does not set \(key.rawValue)")
        }
        let help = MasqdCommand.Run.helpMessage()
        for key in ConfigKey.allCases {
            #expect(help.contains("--\(key.rawValue)"), "help lacks --\(key.rawValue)")
        }
    }

    @Test("/v1/config shows every key as its spec declares, and reads back to the same values")
    func shownValues() throws {
        let c = try config(file: "pod-cidrs: [10.244.0.0/16]\nipv4-native-routing-cidr: 10.0.0.0/8\nconntrack-gc-interval: 1m30s\n")
        let shown = c.shownValues
        for key in ConfigKey.allCases {
            let value = try #require(shown[key], "\(key.rawValue) is not shown")
            let matches = switch (key.spec.kind, value) {
            case (.bool, .bool), (.integer, .integer), (.seconds, .seconds), (.list, .list), (.optionalText, .text): true
            case (.text, .text(let text)): text != nil
            default: false
            }
            #expect(matches, "\(key.rawValue): \(value) is not a \(key.spec.kind)")
        }
        let json = try APIJSON.encoder().encode(ConfigResponse.Daemon(values: shown))
        #expect(try APIJSON.decoder().decode(ConfigResponse.Daemon.self, from: json).values == shown)
        let text = try #require(String(data: json, encoding: .utf8))
        #expect(text.contains(#""conntrack":{"gcInterval":90,"icmpTimeout":30,"#) && text.contains(#""ipv4NativeRoutingCIDR":"10.0.0.0/8""#), "\(text)")
        #expect(!text.contains("socketGroup"), "an unset key is absent: \(text)")
    }

    @Test("flags win over the config file")
    func flagsWin() throws {
        let file = """
            pod-cidrs: [10.244.0.0/16]
            devices: [eth0, eth1]
            snat-port-range: 40000-41000
            enable-ipv6-masquerade: false
            """
        let c = try config(file: file, flags: ["--devices", "ext+", "--enable-ipv6-masquerade=true"])
        #expect(c.devices == [DeviceSelector("ext+")])
        #expect(c.snatPortRange == 40000...41000)
        #expect(c.enableIPv6Masquerade)
    }

    @Test("a JSON config file is read like YAML")
    func jsonFile() throws {
        let c = try config(file: #"{"pod-cidrs": ["10.1.0.0/24", "fd00:1::/64"], "cluster-node-ips": "10.0.0.2,10.0.0.3"}"#)
        #expect(c.podCIDRs.map(\.description) == ["10.1.0.0/24", "fd00:1::/64"])
        #expect(c.clusterNodeIPs.map(\.description) == ["10.0.0.2", "10.0.0.3"])
    }

    @Test("each bad value is reported with its key, and all at once")
    func badValues() {
        let found = problems(flags: [
            "--pod-cidrs", "10.244.0.0/16,10.0.0.1/8", "--snat-port-range", "60000-50000",
            "--enable-ipv4-masquerade", "yes", "--cluster-node-ips", "10.0.0.300",
            "--ipv4-native-routing-cidr", "fd00::/8", "--nat-max-entries", "12", "--log-level", "loud",
            "--attach-mode", "xdp", "--bpffs-root", "relative/path",
        ])
        #expect(found.contains("pod-cidrs[1]: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"))
        #expect(found.contains { $0.hasPrefix("snat-port-range: '60000-50000'") })
        #expect(found.contains("enable-ipv4-masquerade: 'yes' is not a boolean (true or false)"))
        #expect(found.contains("cluster-node-ips[0]: '10.0.0.300' is not an IP address"))
        #expect(found.contains("ipv4-native-routing-cidr: 'fd00::/8' is not an IPv4 CIDR"))
        #expect(found.contains { $0.hasPrefix("nat-max-entries: '12'") })
        #expect(found.contains { $0.hasPrefix("log-level: 'loud' is not one of") })
        #expect(found.contains { $0.hasPrefix("attach-mode: 'xdp' is not one of auto, tcx, tc") })
        #expect(found.contains("bpffs-root: 'relative/path' is not an absolute path"))
        #expect(found.count == 9)
    }

    @Test("conntrack lifetimes and the GC interval read durations; bad ones name their key")
    func conntrackDurations() throws {
        let c = try config(file: "pod-cidrs: [10.0.0.0/8]\nconntrack-tcp-established-timeout: 1h30m\nconntrack-tcp-fin-wait-timeout: 3m\n",
                           flags: ["--conntrack-udp-timeout", "45", "--conntrack-gc-interval", "500ms",
                                   "--conntrack-tcp-close-wait-timeout", "90s"])
        #expect(c.conntrackLifetimes.tcpEstablished == 5400)
        #expect(c.conntrackLifetimes.tcpFinWait == 180 && c.conntrackLifetimes.tcpCloseWait == 90)
        #expect(c.conntrackLifetimes.udpUnreplied == 45)
        #expect(c.conntrackLifetimes.tcpSynSent == FlowLifetimes.default.tcpSynSent)
        #expect(c.conntrackGCInterval == .milliseconds(500))
        #expect(try config(flags: ["--pod-cidrs", "10.0.0.0/8"]).conntrackLifetimes == .default)
        let found = problems(flags: ["--pod-cidrs", "10.0.0.0/8", "--conntrack-icmp-timeout", "soon",
                                     "--conntrack-tcp-closing-timeout", "0s", "--conntrack-udp-replied-timeout", "5x",
                                     "--conntrack-udp-timeout", "1500ms"])
        #expect(found.contains("conntrack-icmp-timeout: 'soon' is not a duration (e.g. 30s, 5m, 6h, 1h30m, or seconds)"))
        #expect(found.contains { $0.hasPrefix("conntrack-tcp-closing-timeout: '0s' is out of range") })
        #expect(found.contains { $0.hasPrefix("conntrack-udp-replied-timeout: '5x'") })
        // Shorter than the datapath's once-a-second refresh can tell from a live flow.
        #expect(found.contains { $0.hasPrefix("conntrack-udp-timeout: '1500ms' is too short: a flow lifetime is at least 2s") })
        #expect(try config(flags: ["--pod-cidrs", "10.0.0.0/8", "--conntrack-tcp-closing-timeout", "2"]).conntrackLifetimes.tcpClosing == 2)
    }

    @Test("pod-cidrs is required")
    func podCIDRsRequired() {
        #expect(problems() == ["pod-cidrs: is required: list the pod CIDRs whose traffic is masqueraded"])
    }

    @Test("an unknown key or malformed YAML in the file is an error naming it")
    func badFile() {
        #expect(problems(file: "pod-cidrs: [10.0.0.0/8]\ndevics: eth0\n").contains { $0.contains("unknown key 'devics'") && $0.contains("line 2") })
        // A syntax error: one line, with the line, without Yams' quoted snippet and caret.
        let syntax = problems(file: "pod-cidrs: [10.0.0.0/8\n")
        #expect(syntax.count == 1 && syntax.first?.hasPrefix("config file test.yaml (line 2): ") == true && syntax.first?.contains("\n") == false,
                "\(syntax)")
        #expect(problems(file: "- a\n- b\n") == ["config file test.yaml: expected a mapping of config keys"])
        #expect(problems(file: "pod-cidrs: {a: b}\n").first?.contains("expected a value or a list") == true)
        // YAML keys are unique: a second one would silently win.
        #expect(problems(file: "pod-cidrs: [10.0.0.0/8]\nlog-level: debug\npod-cidrs: [10.1.0.0/16]\n")
            == ["pod-cidrs: config file test.yaml (line 3): given twice (first on line 1)"])
    }

    @Test("port ranges and prefixes parse at their edges")
    func edges() throws {
        #expect(try config(flags: ["--pod-cidrs", "0.0.0.0/0", "--snat-port-range", "1-65535"]).snatPortRange == 1...65535)
        #expect(problems(flags: ["--pod-cidrs", "10.0.0.0/8", "--snat-port-range", "0-10"]).count == 1)
        #expect(problems(flags: ["--pod-cidrs", "10.0.0.0/33"]) == ["pod-cidrs[0]: '10.0.0.0/33' is not a CIDR (expected ADDRESS/LENGTH, e.g. 10.0.0.0/8 or fd00::/64)"])
        #expect(try config(flags: ["--pod-cidrs", "10.1.2.3"]).podCIDRs.map(\.description) == ["10.1.2.3/32"])
        #expect(try config(flags: ["--pod-cidrs", "fd00::1:0/112"]).podCIDRs.map(\.description) == ["fd00::1:0/112"])
    }
}
