// One error class with a string code; small factories add the context once.

export type ErrorCode =
  | 'ENOENT' // a named thing (snapshot, path, blob) does not exist
  | 'EEXIST'
  | 'EINVAL' // bad user input
  | 'ECORRUPT' // stored bytes fail their hash or checksum
  | 'ETRUNC' // a blob is shorter than its index claims
  | 'ELOCKED' // another writer holds the store
  | 'ENOTDIR'
  | 'EISDIR'
  | 'ENOTEMPTY'
  | 'EROFS' // a read-only view
  | 'ENAMETOOLONG'
  | 'ENODATA' // no such extended attribute
  | 'EPERM'
  | 'EXDEV'
  | 'EBADF'
  | 'ENOSPC'
  | 'EOPNOTSUPP'
  | 'EIO';

export class StrataError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'StrataError';
  }
}

export const notFound = (what: string) => new StrataError('ENOENT', `${what} not found`);
export const invalid = (msg: string) => new StrataError('EINVAL', msg);
export const corrupt = (msg: string) => new StrataError('ECORRUPT', msg);

export function isStrataError(e: unknown, code?: ErrorCode): e is StrataError {
  return e instanceof StrataError && (code === undefined || e.code === code);
}
