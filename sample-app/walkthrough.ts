import { DEMO_USER } from './users/demo-user.js';

/**
 * The curl walkthrough printed at start-up (and shown in the README) for an app at `url`.
 * Plain `sed` pulls the tokens out of the JSON answers, so nothing but curl is needed.
 */
export function walkthrough(url: string): string {
  const json = `-H 'content-type: application/json'`;
  const auth = `-H "authorization: Bearer $TOKEN"`;
  const field = (name: string) => `sed -E 's/.*"${name}":"([^"]+)".*/\\1/'`;
  const login = `LOGIN=$(curl -s ${url}/auth/login ${json} -d '{"email":"${DEMO_USER.email}","password":"${DEMO_USER.password}"}')`;
  return [
    login,
    `TOKEN=$(echo "$LOGIN" | ${field('accessToken')}); REFRESH=$(echo "$LOGIN" | ${field('refreshToken')})`,
    `curl -s ${url}/me ${auth}                  # the verified claims and your account`,
    `curl -s ${url}/auth/sessions ${auth}       # your signed-in devices, this one "current": true`,
    `NEW=$(curl -s ${url}/auth/refresh ${json} -d "{\\"refreshToken\\":\\"$REFRESH\\"}")   # a new pair of the same session`,
    `TOKEN=$(echo "$NEW" | ${field('accessToken')}); curl -s ${url}/me ${auth} -o /dev/null -w '%{http_code}\\n'   # 200`,
    `curl -s ${url}/auth/refresh ${json} -d "{\\"refreshToken\\":\\"$REFRESH\\"}"   # within 10 s: the same pair again (a racing tab)`,
    `sleep 11; curl -s ${url}/auth/refresh ${json} -d "{\\"refreshToken\\":\\"$REFRESH\\"}"   # later: 401 refresh token reused, the session is revoked`,
    `curl -s ${url}/me ${auth}                  # 401: token revoked (the stolen token ended the session for everyone holding it)`,
    login,
    `TOKEN=$(echo "$LOGIN" | ${field('accessToken')})`,
    `curl -s ${url}/auth/logout-everywhere ${auth} ${json} -d '{"keepCurrent":true}'   # log out your other devices`,
    `CONFIRM=$(curl -s ${url}/auth/email ${auth} ${json} -d '{"email":"new@example.com"}' | ${field('confirmationToken')})`,
    `curl -s ${url}/auth/email/confirm ${json} -d "{\\"token\\":\\"$CONFIRM\\"}"   # applies it (log in as new@example.com from now on); a 2nd time: 409`,
    `curl -s -X POST ${url}/auth/logout ${auth} -w '%{http_code}\\n'   # 204: this session ends`,
    `curl -s ${url}/me ${auth}                  # 401: token revoked`,
  ].join('\n');
}
