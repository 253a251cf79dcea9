/** The parts of a `Bearer` challenge (RFC 6750 §3), all optional. */
export interface BearerChallengeParams {
  /** The protection space, sent as `realm="..."`. */
  realm?: string;
  /** An RFC 6750 §3.1 error code: `invalid_request`, `invalid_token` or `insufficient_scope`. */
  error?: string;
  /** A human-readable reason, sent as `error_description="..."` (only with `error`). */
  errorDescription?: string;
}

/**
 * The value of a `WWW-Authenticate` header for the `Bearer` scheme: `Bearer` alone, or
 * `Bearer realm="api", error="invalid_token", error_description="token expired"`.
 *
 * Every value ends up in a response header, where Node throws on control characters (a
 * 500 instead of the 401), so nothing is passed through unchecked. `error` and
 * `error_description` may only hold printable ASCII other than `"` and `\` (RFC 6750 §3,
 * no escapes allowed), so other characters are replaced; `realm` is an ordinary
 * quoted-string, so `"` and `\` are escaped.
 */
export function bearerChallenge({ realm, error, errorDescription }: BearerChallengeParams = {}): string {
  const params: string[] = [];
  if (realm !== undefined) params.push(`realm="${printableAscii(realm).replace(/["\\]/g, '\\$&')}"`);
  if (error !== undefined) {
    params.push(`error="${rfc6750Chars(error)}"`);
    if (errorDescription !== undefined) params.push(`error_description="${rfc6750Chars(errorDescription)}"`);
  }
  return params.length === 0 ? 'Bearer' : `Bearer ${params.join(', ')}`;
}

/** Printable ASCII and space; anything else (control characters, non-ASCII) becomes `?`. */
function printableAscii(value: string): string {
  return value.replace(/[^\x20-\x7e]/gu, '?');
}

/** RFC 6750's `%x20-21 / %x23-5B / %x5D-7E`: printable ASCII without `"` and `\`. */
function rfc6750Chars(value: string): string {
  return printableAscii(value).replace(/"/g, "'").replace(/\\/g, '/');
}
