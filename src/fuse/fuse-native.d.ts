// Minimal types for fuse-native 2.2.x (CommonJS, ships none). Only what Strata uses or must know
// about; signatures follow node_modules/fuse-native/index.js, not its README where they differ.

declare module 'fuse-native' {
  namespace Fuse {
    /** `code` is 0 or a negative errno (Fuse.ENOENT...). */
    type DoneCallback = (code: number) => void;
    type ValueCallback<T> = (code: number | null, value?: T) => void;
    /**
     * Read and write answer with the byte count in the first slot (non-negative) or a negative
     * errno; there is no separate value.
     */
    type CountCallback = (countOrErrno: number) => void;

    interface Stat {
      mode: number;
      uid?: number;
      gid?: number;
      size?: number;
      dev?: number;
      nlink?: number;
      /** Ignored by libfuse2 unless the `use_ino` option is set. */
      ino?: number;
      rdev?: number;
      blksize?: number;
      blocks?: number;
      /** Date or milliseconds since the epoch. */
      atime?: Date | number;
      mtime?: Date | number;
      ctime?: Date | number;
    }

    interface Statfs {
      bsize?: number;
      frsize?: number;
      blocks?: number;
      bfree?: number;
      bavail?: number;
      files?: number;
      ffree?: number;
      favail?: number;
      fsid?: number;
      flag?: number;
      namemax?: number;
    }

    /**
     * Handlers. `buf` in read/write is an external Buffer over libfuse's own memory: it is detached
     * once the callback is answered, so copy what you need before any asynchronous step.
     */
    interface Operations {
      init?(cb: DoneCallback): void;
      access?(path: string, mode: number, cb: DoneCallback): void;
      statfs?(path: string, cb: ValueCallback<Statfs>): void;
      getattr?(path: string, cb: ValueCallback<Stat>): void;
      /** Note: fuse-native answers fgetattr by calling `getattr`, not this handler. */
      fgetattr?(path: string, fd: number, cb: ValueCallback<Stat>): void;
      flush?(path: string, fd: number, cb: DoneCallback): void;
      fsync?(path: string, datasync: number, fd: number, cb: DoneCallback): void;
      fsyncdir?(path: string, datasync: number, fd: number, cb: DoneCallback): void;
      readdir?(path: string, cb: (code: number | null, names?: string[], stats?: Stat[]) => void): void;
      truncate?(path: string, size: number, cb: DoneCallback): void;
      ftruncate?(path: string, fd: number, size: number, cb: DoneCallback): void;
      /** Times in milliseconds since the epoch. */
      utimens?(path: string, atime: number, mtime: number, cb: DoneCallback): void;
      readlink?(path: string, cb: ValueCallback<string>): void;
      chown?(path: string, uid: number, gid: number, cb: DoneCallback): void;
      chmod?(path: string, mode: number, cb: DoneCallback): void;
      mknod?(path: string, mode: number, dev: number, cb: DoneCallback): void;
      setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: DoneCallback): void;
      getxattr?(path: string, name: string, position: number, cb: ValueCallback<Buffer | null>): void;
      listxattr?(path: string, cb: ValueCallback<string[]>): void;
      removexattr?(path: string, name: string, cb: DoneCallback): void;
      /** `fd` becomes fuse_file_info.fh: an unsigned 32-bit number chosen by the handler. */
      open?(path: string, flags: number, cb: ValueCallback<number>): void;
      opendir?(path: string, flags: number, cb: ValueCallback<number>): void;
      read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: CountCallback): void;
      write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: CountCallback): void;
      release?(path: string, fd: number, cb: DoneCallback): void;
      releasedir?(path: string, fd: number, cb: DoneCallback): void;
      /** Receives the mode only; the open flags are not passed through. */
      create?(path: string, mode: number, cb: ValueCallback<number>): void;
      unlink?(path: string, cb: DoneCallback): void;
      rename?(src: string, dest: string, cb: DoneCallback): void;
      link?(src: string, dest: string, cb: DoneCallback): void;
      symlink?(src: string, dest: string, cb: DoneCallback): void;
      mkdir?(path: string, mode: number, cb: DoneCallback): void;
      rmdir?(path: string, cb: DoneCallback): void;
    }

    /** The option fields fuse-native itself turns into `-o` options (see _fuseOptions). */
    interface Options {
      debug?: boolean;
      force?: boolean;
      mkdir?: boolean;
      /** Per-request answer deadline in ms (default 15000); on expiry the kernel gets ETIMEDOUT. */
      timeout?: number | false | ({ default?: number } & Record<string, number | false | undefined>);
      allowOther?: boolean;
      allowRoot?: boolean;
      autoUnmount?: boolean;
      defaultPermissions?: boolean;
      blkdev?: boolean;
      blksize?: number;
      maxRead?: number;
      fd?: number;
      fsname?: string;
      subtype?: string;
      kernelCache?: boolean;
      autoCache?: boolean;
      umask?: number;
      uid?: number;
      gid?: number;
      entryTimeout?: number;
      attrTimeout?: number;
      acAttrTimeout?: number;
      noforget?: boolean;
      remember?: number;
      modules?: string;
      displayFolder?: boolean;
      name?: string;
    }
  }

  class Fuse {
    constructor(mnt: string, ops: Fuse.Operations, opts?: Fuse.Options);
    readonly mnt: string;
    readonly opts: Fuse.Options;
    /** Answers once the kernel's INIT request has reached the handlers. */
    mount(cb: (err: Error | null) => void): void;
    /** Runs `fusermount -uz` on the mountpoint, then releases the native side. */
    unmount(cb: (err: Error | null) => void): void;
    errno(code: string): number;
    /**
     * Internal (underscore) method: builds the single `-o...` argument handed to libfuse, or ''.
     * Declared because src/fuse/mount-options.ts extends it.
     */
    _fuseOptions(): string;

    static unmount(mnt: string, cb: (err: Error | null) => void): void;

    static readonly EPERM: number;
    static readonly ENOENT: number;
    static readonly EINTR: number;
    static readonly EIO: number;
    static readonly ENXIO: number;
    static readonly EBADF: number;
    static readonly EAGAIN: number;
    static readonly ENOMEM: number;
    static readonly EACCES: number;
    static readonly EBUSY: number;
    static readonly EEXIST: number;
    static readonly EXDEV: number;
    static readonly ENODEV: number;
    static readonly ENOTDIR: number;
    static readonly EISDIR: number;
    static readonly EINVAL: number;
    static readonly EFBIG: number;
    static readonly ENOSPC: number;
    static readonly EROFS: number;
    static readonly ENAMETOOLONG: number;
    static readonly ENOSYS: number;
    static readonly ENOTEMPTY: number;
    static readonly ENODATA: number;
    static readonly EOPNOTSUPP: number;
    static readonly ENOTCONN: number;
    static readonly ETIMEDOUT: number;
  }

  export = Fuse;
}
