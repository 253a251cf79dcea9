import { ParseBodyPipe, emailField, optionalBooleanField, stringField } from '../common/parse-body.pipe.js';

/** Body of `POST /auth/login`. */
export interface LoginBody {
  email: string;
  password: string;
}

/** Body of `POST /auth/refresh`. */
export interface RefreshBody {
  refreshToken: string;
}

/** Body of `POST /auth/logout-everywhere`. */
export interface LogOutEverywhereBody {
  /** Keep the token of this request valid ("log out my other devices"). Default `false`. */
  keepCurrent: boolean;
}

/** Body of `POST /auth/password`. */
export interface ChangePasswordBody {
  currentPassword: string;
  newPassword: string;
}

/** Body of `POST /auth/email`. */
export interface ChangeEmailBody {
  email: string;
}

/** Body of `POST /auth/email/confirm`. */
export interface ConfirmEmailBody {
  token: string;
}

/** Validates {@link LoginBody}. */
export const loginBody = new ParseBodyPipe<LoginBody>(
  (body) => ({
    email: emailField(body),
    password: stringField(body, 'password'),
  }),
  ['email', 'password'],
);

/** Validates {@link RefreshBody}. */
export const refreshBody = new ParseBodyPipe<RefreshBody>(
  (body) => ({ refreshToken: stringField(body, 'refreshToken', 1, 4096) }),
  ['refreshToken'],
);

/** Validates {@link LogOutEverywhereBody}; an empty body is fine. */
export const logOutEverywhereBody = new ParseBodyPipe<LogOutEverywhereBody>(
  (body) => ({
    keepCurrent: optionalBooleanField(body, 'keepCurrent', false),
  }),
  ['keepCurrent'],
);

/** Validates {@link ChangePasswordBody}: the new password has 12 to 1024 characters. */
export const changePasswordBody = new ParseBodyPipe<ChangePasswordBody>(
  (body) => ({
    currentPassword: stringField(body, 'currentPassword'),
    newPassword: stringField(body, 'newPassword', 12, 1024),
  }),
  ['currentPassword', 'newPassword'],
);

/** Validates {@link ChangeEmailBody}. */
export const changeEmailBody = new ParseBodyPipe<ChangeEmailBody>((body) => ({ email: emailField(body) }), ['email']);

/** Validates {@link ConfirmEmailBody}. */
export const confirmEmailBody = new ParseBodyPipe<ConfirmEmailBody>((body) => ({ token: stringField(body, 'token', 1, 4096) }), ['token']);
