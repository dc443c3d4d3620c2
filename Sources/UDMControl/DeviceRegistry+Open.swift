extension DeviceRegistry {
    /// Disks whose file is open (a loop device, a mounted file system, a process), with how
    /// many handles each has, in creation order.
    public func openDisks() -> [(name: String, handles: Int)] {
        locked {
            order.compactMap { name in
                let handles = fuse.openCount(name: name)
                return handles > 0 ? (name, handles) : nil
            }
        }
    }
}
