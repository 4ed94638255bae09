/// One read shared by the requests that want it at the same time: a request that comes while
/// the read is in flight waits for that read's answer instead of starting its own, and nothing
/// is kept once it completes (the next request reads afresh). `/v1/status` and `/metrics` each
/// cost a few dozen map reads and an encoding; 50 clients at once then cost one or two of those
/// instead of 50 queued on two cores, and no answer is older than the read it waited for.
actor SharedRead<Value: Sendable> {
    private var inFlight: Task<Value, any Error>?
    /// Requests answered by a read another request started.
    private(set) var joined = 0

    func value(_ read: @escaping @Sendable () async throws -> Value) async throws -> Value {
        if let inFlight {
            joined += 1
            return try await inFlight.value
        }
        // Unstructured: a caller that goes away (its connection closed) does not cancel the
        // read the others wait for.
        let task = Task { try await read() }
        inFlight = task
        let result = await task.result
        inFlight = nil
        return try result.get()
    }
}
