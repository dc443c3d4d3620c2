/// The split/clone/map pipeline (dm: dm_submit_bio, __split_and_process_bio, __map_bio,
/// __send_duplicate_bios, dm_io_dec_pending).
///
/// An original bio is cut into pieces: a piece ends at the target's end and, for reads and
/// writes, at the target's next `maxIOLength` boundary. Each piece is cloned and mapped; a
/// pass maps as many read/write pieces as the pool spares without waiting (discards and
/// write-zeroes: one target's duplicates). If anything is left, the original goes back on
/// this thread's `BioList` behind what the pass produced (dm since 4.16), so splitting never
/// recurses. The original holds one reference for itself while it is being split and one per
/// clone; the last to drop ends it, with the first error any clone reported. A flush (or the
/// PREFLUSH of a write) is sent the same way, one target per pass. A write's data starts only
/// once every flush clone has ended, as in dm: the preflush is a stage of its own, after which
/// the original, still in flight, goes through again for its data (or fails with the flush's
/// error, writing nothing). Otherwise a commit block written with PREFLUSH could land before
/// the data it describes whenever a lower device ends flushes late.
extension MappedDevice {
    public func submitBio(_ bio: Bio) {
        if !bio.splitting {
            guard admit(bio) else { return }
            bio.splitting = true
            bio.admittedAt = self
            statsAdmitted(bio)
            bio.pending.store(1, ordering: .relaxed)
            bio.firstError.store(0, ordering: .relaxed)
            bio.nextSector = bio.sector
            bio.remainingSectors = bio.sectors
            bio.bufferOffset = 0
            bio.flushingTarget = bio.op == .flush || bio.flags.contains(.preflush) ? 0 : nil
            bio.awaitingPreflush = bio.op.carriesData && bio.flushingTarget != nil
        }
        let table = admittedTable
        if let index = bio.flushingTarget, index < table.entries.count {
            guard sendFlushes(for: bio, to: table.entries[index].target, table: table) else { return }
            bio.flushingTarget = index + 1
            bio.submit(to: self)
            return
        }
        bio.flushingTarget = nil
        if bio.awaitingPreflush {
            // The flush stage ends when its last clone does (preflushEnded).
            bio.dropReference()
            return
        }
        processNextPiece(of: bio, table: table)
    }

    /// Every flush clone of a PREFLUSH write has ended: send its data through, or fail it.
    private func preflushEnded(_ bio: Bio) {
        bio.awaitingPreflush = false
        if bio.firstError.load(ordering: .relaxed) != 0 {
            finish(bio)
            return
        }
        bio.pending.store(1, ordering: .relaxed)
        bio.submit(to: self)
    }

    private func processNextPiece(of bio: Bio, table: Table) {
        if bio.op.carriesData {
            guard mapPieces(of: bio, table: table) else { return }
        } else if bio.remainingSectors > 0 {
            let sector = bio.nextSector
            guard sector < table.sectors else {
                bio.childEnded(.ioError)
                return
            }
            bio.pieces &+= 1
            let entry = table.entries[table.entryIndex(for: sector)]
            let length = min(bio.remainingSectors, entry.end - sector)
            let count = bio.op == .discard ? entry.target.discardBios : entry.target.writeZeroesBios
            guard sendDuplicates(count, of: bio, to: entry.target, table: table, sector: sector, sectors: length) else {
                bio.pieces &-= 1
                return
            }
            advance(bio, by: length)
        }
        if bio.remainingSectors > 0 {
            bio.submit(to: self)
        } else {
            bio.dropReference()
        }
    }

    /// Cuts and maps the next pieces of a read or write. When the pool has no clone for the
    /// first piece, the original parks on it (false: it comes back when a clone is released);
    /// the naive policy (tests) waits instead. Further pieces are taken only while the pool has
    /// clones to spare, so a pass never waits while holding clones, and the pieces that land
    /// next to each other on a lower device sit together on the BioList where it can merge them.
    private func mapPieces(of bio: Bio, table: Table) -> Bool {
        let limit = max(1, table.bioSet.capacity / 4)
        var taken = 0
        while bio.remainingSectors > 0 && taken < limit {
            let sector = bio.nextSector
            guard sector < table.sectors else {
                // Past the end: the rest fails, what was mapped goes on.
                _ = bio.firstError.compareExchange(expected: 0, desired: BioStatus.ioError.errno, ordering: .relaxed)
                bio.remainingSectors = 0
                return true
            }
            let clone: Bio?
            if taken > 0 {
                clone = table.bioSet.allocate(.noWait)
            } else if manyPolicy == .naive {
                clone = table.bioSet.allocate(.waitHoldingPlug)
            } else {
                guard let first = table.bioSet.allocate(for: bio) else { return false }
                clone = first
            }
            guard let clone else { return true }
            taken += 1
            bio.pieces &+= 1
            let entry = table.entries[table.entryIndex(for: sector)]
            let target = entry.target
            var length = min(bio.remainingSectors, entry.end - sector)
            let maxIO = target.maxIOLength
            if maxIO > 0 {
                length = min(length, maxIO - (sector - entry.begin) % maxIO)
            }
            prepare(clone, of: bio, sector: sector, sectors: length, index: 0)
            let list = BioList.current
            list.acceptedSectors = length
            map(clone, by: target)
            advance(bio, by: list.acceptedSectors)
        }
        return true
    }

    @inline(__always)
    private func advance(_ bio: Bio, by sectors: UInt64) {
        bio.nextSector += sectors
        bio.remainingSectors -= sectors
        bio.bufferOffset += Int(sectors) << 9
    }

    /// Sends one target its `flushBios` empty flushes (for a flush, or ahead of a PREFLUSH
    /// write's data). One target per pass through the BioList, like a split, so a thread never
    /// holds more clones of this device than one target's duplicate count.
    private func sendFlushes(for bio: Bio, to target: Target, table: Table) -> Bool {
        sendDuplicates(target.flushBios, of: bio, to: target, table: table, sector: 0, sectors: 0, op: .flush)
    }

    /// Sends `count` identical clones of a range (or of an empty flush) to one target,
    /// allocated together with the bioset's multi-clone discipline; a single clone the pool
    /// cannot give parks the original (false, as in `mapPieces`).
    private func sendDuplicates(_ count: Int, of bio: Bio, to target: Target, table: Table,
                                sector: UInt64, sectors: UInt64, op: BioOp? = nil) -> Bool {
        guard count > 0 else {
            // A target that takes no flushes has nothing to make durable (dm skips it); one
            // that takes no discards or write-zeroes does not support them.
            if op != .flush {
                _ = bio.firstError.compareExchange(expected: 0, desired: BioStatus.notSupported.errno, ordering: .relaxed)
            }
            return true
        }
        var clone: Bio?
        if let set = bio.reservedClones {
            bio.reservedClones = nil
            clone = set
        } else if manyPolicy == .naive {
            clone = table.bioSet.allocateMany(count, policy: .naive)
        } else if count == 1 {
            guard let one = table.bioSet.allocate(for: bio) else { return false }
            clone = one
        } else if let set = table.bioSet.allocateManyNoWait(count) {
            clone = set
        } else {
            waitForSet(of: count, for: bio)
            return false
        }
        var index = 0
        while let c = clone {
            clone = c.next
            c.next = nil
            prepare(c, of: bio, sector: sector, sectors: sectors, index: index, op: op)
            map(c, by: target)
            index += 1
        }
        return true
    }

    /// Hands `bio` to the set allocator: it comes back through `submitBio` with its clones.
    private func waitForSet(of count: Int, for bio: Bio) {
        bio.clonesNeeded = count
        waitingSets.withLock {
            bio.next = nil
            if let tail = waitingSetsTail { tail.next = bio } else { waitingSetsHead = bio }
            waitingSetsTail = bio
        }
        setAllocator.kick()
    }

    /// On the set allocator's thread: takes each waiting original's set (NOWAIT, then the
    /// allocation mutex and waiting: the discipline that lets only one thread hold a partial
    /// set) and submits the original again, outside any submission loop.
    func allocateWaitingSets() {
        while let bio = waitingSets.withLock({ () -> Bio? in
            let head = waitingSetsHead
            waitingSetsHead = head?.next
            if waitingSetsHead == nil { waitingSetsTail = nil }
            head?.next = nil
            return head
        }) {
            bio.reservedClones = admittedTable.bioSet.allocateMany(bio.clonesNeeded, policy: manyPolicy)
            bio.submit(to: self)
        }
    }

    @inline(__always)
    private func prepare(_ clone: Bio, of bio: Bio, sector: UInt64, sectors: UInt64, index: Int, op: BioOp? = nil) {
        clone.op = op ?? bio.op
        clone.flags = bio.flags.subtracting(.preflush)
        if op == .flush { clone.flags = [] }
        clone.sector = sector
        clone.sectors = sectors
        clone.buffer = clone.op.carriesData ? bio.buffer.map { $0 + bio.bufferOffset } : nil
        clone.duplicateIndex = index
        clone.parent = bio
        bio.takeReference()
    }

    @inline(__always)
    private func map(_ clone: Bio, by target: Target) {
        clone.mappedBy = target
        switch target.map(clone) {
        case .remapped(let device):
            clone.submit(to: device)
        case .submitted:
            break
        case .kill(let status):
            clone.end(status)
        case .requeue:
            clone.end(.requeue)
        }
    }

    /// The original's last reference is gone: end it, or send it through again if a target
    /// asked for a requeue.
    func originalFinished(_ bio: Bio) {
        if bio.awaitingPreflush && !bio.requeueRequested.load(ordering: .relaxed) {
            preflushEnded(bio)
            return
        }
        finish(bio)
    }

    private func finish(_ bio: Bio) {
        bio.splitting = false
        bio.admittedAt = nil
        leaveInFlight()
        if bio.requeueRequested.exchange(false, ordering: .relaxed) {
            bio.submit(to: self)
            return
        }
        statsCompleted(bio)
        let error = bio.firstError.load(ordering: .relaxed)
        bio.end(error == 0 ? .ok : BioStatus(errno: error))
    }
}
