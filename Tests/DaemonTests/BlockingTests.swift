@preconcurrency import Glibc
import Blocking
import Dispatch
import Synchronization
import Testing

// The time limits catch a hang, not slowness. When the BPF program tests shared this process, their
// synchronous loads held both cooperative threads for up to a minute and a half, and these tests
// took 56-85 s; scripts/test.sh now runs them in a process of their own, but a full run still
// shares two cores with the end-to-end suites' daemons.
@Suite("Blocking pool and poll loops")
struct BlockingTests {
    struct Failure: Error {}

    @Test("a job runs while more long-lived jobs than cores hold threads; results and errors come back",
          .timeLimit(.minutes(5)))
    func poolGrows() async throws {
        let pool = BlockingPool(name: "test-blocking", idleTimeout: .seconds(1))
        let release = DispatchSemaphore(value: 0)
        let held = 8
        for _ in 0..<held {
            pool.submit { release.wait() }
        }
        #expect(try await pool.run { 6 * 7 } == 42)
        await #expect(throws: Failure.self) { try await pool.run { throw Failure() } }
        for _ in 0..<held { release.signal() }
        // Threads freed by the held jobs take new work.
        let sums = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<20 { group.addTask { try await pool.run { i } } }
            return try await group.reduce(0, +)
        }
        #expect(sums == (0..<20).reduce(0, +))
    }

    @Test("a poll loop wakes on a readable descriptor, and stop() returns after it ended", .timeLimit(.minutes(5)))
    func pollLoop() async throws {
        var ends: [Int32] = [-1, -1]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        let readEnd = ends[0]
        let loop = try PollLoop()
        let (woke, wakes) = AsyncStream.makeStream(of: Void.self)
        let ended = Mutex(false)
        loop.start(fd: readEnd, onWake: { wake in
            var byte: UInt8 = 0
            if wake == .readable { _ = read(readEnd, &byte, 1) }
            wakes.yield()
            return true
        }, onEnd: { errno in
            #expect(errno == nil)
            ended.withLock { $0 = true }
        })
        var byte: UInt8 = 1
        #expect(write(ends[1], &byte, 1) == 1)
        var iterator = woke.makeAsyncIterator()
        await iterator.next()
        #expect(!ended.withLock { $0 })
        await loop.stop()
        #expect(ended.withLock { $0 })
        await loop.stop()
    }
}
