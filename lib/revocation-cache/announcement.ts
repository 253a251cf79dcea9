/** What a write of this instance makes its revocation cache drop: every cached answer about that token or subject. */
export interface Announcement {
  kind: 'jti' | 'subject';
  key: string;
}
