import { Inject, Injectable, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import type { EntitySubscriberInterface, ObjectLiteral, UpdateEvent } from 'typeorm';
import { defaultSubjectOf, type ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenResourceConfigError } from '../token-resource.exceptions.js';
import { TokenStore } from '../token.store.js';
import { registerSubscriber } from '../typeorm/register-subscriber.js';
import { LogOutEverywhereService } from './log-out-everywhere.service.js';

/**
 * With `logOutEverywhere.applyOnPasswordChange`, a TypeORM subscriber on
 * `logOutEverywhere.userEntity`: when a `save` changes `passwordField`, it logs the
 * user out everywhere through the manager of the save's own transaction (TypeORM wraps
 * every `save` in one, or joins the caller's), so a password change that rolls back
 * revokes nothing, and one that commits cannot leave old sessions alive. Once that
 * transaction commits (the caller's, for a `save` inside one) it logs the user out again
 * (`repeatAfterCommit`), so that a login that still read the old password hash while the
 * change was pending does not keep its token either.
 *
 * Only `save` (and `manager.save`) is seen with the old and new values. Not seen, because
 * TypeORM runs no update subscriber for them or does not say which rows they changed:
 * `update()`, `upsert()`, `save(user, { listeners: false })`, query builders, raw SQL and
 * other ORMs. Code that changes passwords that way calls
 * {@link LogOutEverywhereService.logOutOnPasswordChange} itself.
 *
 * It stays registered when the data source is destroyed and initialised again (see
 * `registerSubscriber`).
 */
@Injectable()
export class PasswordChangeSubscriber implements EntitySubscriberInterface<ObjectLiteral>, OnModuleInit, OnModuleDestroy {
  private unregister?: () => void;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    private readonly store: TokenStore,
    private readonly logOut: LogOutEverywhereService,
  ) {}

  /**
   * Registers on the token table's data source. The user entity must live there too:
   * the revocation has to share the password change's transaction.
   *
   * @throws TokenResourceConfigError when `userEntity` is not an entity of that data source,
   *   `passwordField` not one of its columns, or it has no `id` column for the default `subjectOf`.
   */
  onModuleInit(): void {
    const { applyOnPasswordChange, userEntity } = this.options.logOutEverywhere;
    if (!applyOnPasswordChange || !userEntity) return;
    const dataSource = this.store.repository.manager.connection;
    if (!dataSource.hasMetadata(userEntity)) {
      throw new TokenResourceConfigError(
        `nestjs-token-resource: logOutEverywhere.userEntity is not an entity of data source '${this.options.dataSource}', where the token table lives. Register it there: the log-out must run in the password change's transaction.`,
      );
    }
    const column = dataSource.getMetadata(userEntity).findColumnWithPropertyName(this.options.logOutEverywhere.passwordField);
    if (!column) {
      throw new TokenResourceConfigError(
        `nestjs-token-resource: logOutEverywhere.passwordField '${this.options.logOutEverywhere.passwordField}' is not a column of logOutEverywhere.userEntity.`,
      );
    }
    // The default would log out the subject 'undefined', or refuse every password change.
    if (this.options.logOutEverywhere.subjectOf === defaultSubjectOf && !dataSource.getMetadata(userEntity).findColumnWithPropertyName('id')) {
      throw new TokenResourceConfigError(
        "nestjs-token-resource: logOutEverywhere.userEntity has no 'id' column for the default subjectOf (u => String(u.id)). Set logOutEverywhere.subjectOf to the user's JWT sub, for example (u) => u.uuid.",
      );
    }
    this.unregister = registerSubscriber(dataSource, this);
  }

  /** Unregisters, so that a closed application leaves no subscriber on a shared data source. */
  onModuleDestroy(): void {
    this.unregister?.();
    this.unregister = undefined;
  }

  /** TypeORM: only events of the configured user entity reach this subscriber. */
  listenTo(): Function | string {
    return this.options.logOutEverywhere.userEntity as Function | string;
  }

  /**
   * TypeORM: after the UPDATE of a user row, still inside the save's transaction. Runs
   * after rather than before so that a save that fails on its own UPDATE never revokes.
   */
  async afterUpdate(event: UpdateEvent<ObjectLiteral>): Promise<void> {
    if (!this.passwordChanged(event)) return;
    const user = { ...event.databaseEntity, ...event.entity };
    await this.logOut.logOutOnPasswordChange(user, event.manager);
  }

  private passwordChanged(event: UpdateEvent<ObjectLiteral>): boolean {
    const field = this.options.logOutEverywhere.passwordField;
    // `save` lists exactly the columns whose value differs from the row it loaded, so
    // saving other fields (or the same hash again) does not count as a change.
    return event.updatedColumns.some((column) => column.propertyName === field);
  }
}
